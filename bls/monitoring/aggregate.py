"""Compute the ``monitoring`` model's statistics, drift and captures over its events.

Without Triton: ``Monitor`` does the work, from the config (``MonitorSettings``).

The worker thread (bls/monitoring/service.py) calls ``Monitor.record``;
``Monitor.snapshot`` (the 'stats' command) and ``Monitor.drop`` run on Triton's threads
meanwhile: all the state they read or write is changed under ``Monitor``'s one lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from bls.contract.parameters import MONITORING_PARAMETERS
from bls.monitoring.capture import CaptureSettings, CaptureStore
from bls.monitoring.drift import COUNT_EDGES, SCORE_EDGES, DriftMonitor, DriftSettings
from bls.monitoring.event import Event

if TYPE_CHECKING:
    from bls.monitoring.metrics import TritonMetrics

LATENCY_WINDOW = 1000  # requests kept for latency percentiles


@dataclass(frozen=True)
class MonitorSettings:
    """Hold the monitoring model's config parameters (MONITORING_PARAMETERS), checked."""

    queue_size: int
    queue_max_bytes: int
    max_event_bytes: int
    max_subscriptions: int
    drift: DriftSettings
    capture: CaptureSettings | None

    @classmethod
    def from_config(cls, model_config: Mapping) -> "MonitorSettings":
        """Read the model's config as ``initialize`` gets it, strictly, through the registry.

        Raises:
            ValueError: an unknown or malformed parameter, named (InvalidInput is one),
                or max_event_bytes over queue_max_bytes.
        """
        p = MONITORING_PARAMETERS.read_config(model_config)
        if p["max_event_bytes"] > p["queue_max_bytes"]:
            raise ValueError(f"config parameter max_event_bytes={p['max_event_bytes']} must be "
                             f"<= queue_max_bytes={p['queue_max_bytes']} (a larger event "
                             f"could never be queued)")
        drift = DriftSettings(p["drift_reference_size"], p["drift_window_size"],
                              p["drift_check_every"], p["drift_threshold"])
        capture = (CaptureSettings(Path(p["capture_dir"]), p["capture_max_bytes"],
                                   p["capture_max_files"]) if p["capture_dir"] else None)
        return cls(p["queue_size"], p["queue_max_bytes"], p["max_event_bytes"],
                   p["max_subscriptions"], drift, capture)


class Monitor:
    """Keep statistics, drift and captures over the events it is given.

    ``record`` and ``reset_reference`` are the worker's (one thread): the drift monitor
    and the capture store are its alone. Everything ``snapshot`` reads (counters,
    histograms, latencies, the latest PSI, the capture statistics) is changed under
    ``_lock`` and read under it; capture's file writes happen outside it.

    Args:
        class_names: the model's class names, indexed by an event's classes.
        settings: the config.
        metrics: an object with the methods of ``TritonMetrics`` (or None): the
            Prometheus side, updated under the same lock as the statistics.
    """

    def __init__(self, class_names: Sequence[str], settings: MonitorSettings,
                 metrics: TritonMetrics | None = None):
        self.class_names = list(class_names)
        self.settings = settings
        self.metrics = metrics
        self.drift = DriftMonitor(settings.drift)
        self.capture = CaptureStore(settings.capture) if settings.capture else None
        self._lock = threading.Lock()
        self.events = 0
        self.dropped = 0
        self.alerts = 0
        self.reasons: Counter[str] = Counter()
        self.per_class: Counter[str] = Counter()
        self.score_hist = np.zeros(len(SCORE_EDGES) - 1, np.int64)
        self.detection_hist = np.zeros(len(COUNT_EDGES) - 1, np.int64)
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.psi: dict[str, float] = {}
        self.capture_stats = self._capture_stats()
        self.started = time.time()

    def parse(self, arrays: Mapping[str, np.ndarray | None]) -> Event:
        """Check input arrays by name into an Event (Event.from_arrays, this model's bounds).

        Raises:
            InvalidInput: naming the input and the offending value.
        """
        return Event.from_arrays(arrays, len(self.class_names), self.settings.max_event_bytes)

    def record(self, event: Event) -> list[dict]:
        """Account for one event; return the alerts it raises (as JSON-able dicts)."""
        names = [self.class_names[c] for c in event.classes.tolist()]
        scores = np.histogram(event.scores, SCORE_EDGES)[0]
        per_request = np.histogram([len(event.scores)], COUNT_EDGES)[0]
        alerts = [a.to_dict() for a in self.drift.add(event.scores, len(event.scores))]
        with self._lock:
            self.events += 1
            self.reasons.update(event.reasons)
            self.per_class.update(names)
            self.score_hist += scores
            self.detection_hist += per_request
            self.latencies.append(event.latency_ms)
            self.psi = dict(self.drift.latest)
            self.alerts += len(alerts)
            if self.metrics is not None:
                self.metrics.event(event, names, self.psi, alerts)
        if self.capture is not None and event.image is not None:
            saved = self.capture.save(event.image, event.predictions or "{}")
            with self._lock:
                self.capture_stats = self._capture_stats()
                if self.metrics is not None:
                    self.metrics.captured(saved is not None, self.capture.bytes_used)
        return alerts

    def reset_reference(self) -> None:
        """Start a new drift reference window (DriftMonitor.reset)."""
        self.drift.reset()
        with self._lock:
            self.psi = {}

    def drop(self) -> None:
        """Count an event that found the queue full."""
        with self._lock:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.dropped()

    def _capture_stats(self) -> dict | None:
        if self.capture is None:
            return None
        return {"saved": self.capture.saved, "refused": self.capture.refused,
                "evicted": self.capture.evicted, "files": self.capture.files,
                "bytes": self.capture.bytes_used, "max_bytes": self.capture.settings.max_bytes,
                "max_files": self.capture.settings.max_files}

    def snapshot(self) -> dict:
        """Report the statistics as JSON-able data (the 'stats' command), all of one moment."""
        with self._lock:
            latencies = np.array(self.latencies, np.float64)
            stats = {
                "type": "stats",
                "uptime_s": round(time.time() - self.started, 1),
                "events": self.events, "dropped": self.dropped, "alerts": self.alerts,
                "reasons": dict(self.reasons),
                "detections_per_class": dict(self.per_class.most_common()),
                "score_histogram": {"edges": SCORE_EDGES.round(2).tolist(),
                                    "counts": self.score_hist.tolist()},
                "detections_per_request": {"edges": [e if np.isfinite(e) else None
                                                     for e in COUNT_EDGES.tolist()],
                                           "counts": self.detection_hist.tolist()},
                "latency_ms": ({"count": len(latencies),
                                "p50": round(float(np.percentile(latencies, 50)), 1),
                                "p99": round(float(np.percentile(latencies, 99)), 1),
                                "max": round(float(latencies.max()), 1)}
                               if len(latencies) else {"count": 0}),
                "drift_psi": {k: round(v, 4) for k, v in self.psi.items()},
            }
            if self.capture_stats is not None:
                stats["capture"] = dict(self.capture_stats)
        return stats
