"""What the ``monitoring`` model does with an event, without Triton: statistics, drift,
sample capture, Prometheus metrics and alerts.

The model (models/monitoring/1/model.py) acknowledges each event at once and hands it
to one worker thread through a bounded queue; the worker calls ``Monitor.record``. So
this module runs off the request path, and everything in it is single-threaded except
``Monitor.snapshot``, which takes the lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from bls.capture import CaptureSettings, CaptureStore
from bls.config import int_parameter
from bls.drift import COUNT_EDGES, SCORE_EDGES, DriftMonitor, DriftSettings
from bls.errors import InvalidInput

SCORE_BUCKETS = [round(float(v), 2) for v in SCORE_EDGES[1:]]  # le="0.3", not 0.30000000000000004
DETECTION_BUCKETS = [float(v) for v in COUNT_EDGES[1:-1] - 1] + [100.0]  # le=0,1,2,4,...
LATENCY_BUCKETS_MS = [50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0]
LATENCY_WINDOW = 1000  # requests kept for latency percentiles


@dataclass(frozen=True)
class Event:
    """One answered request, as pipeline_bls sent it (bls.contract.MONITORING_INPUTS)."""

    reasons: tuple[str, ...]
    scores: np.ndarray  # float32 [N]
    classes: np.ndarray  # int64 [N]
    latency_ms: float
    image: bytes | None = None
    predictions: str | None = None

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray | None]) -> "Event":
        """Input arrays by name -> Event; raises InvalidInput naming a bad input."""
        def get(name):
            value = arrays.get(name)
            if value is None:
                raise InvalidInput(name, "is missing (an event needs reasons, scores, "
                                         "classes and latency_ms)")
            return np.asarray(value)

        scores, classes = get("scores").reshape(-1), get("classes").reshape(-1)
        if scores.dtype != np.float32 or classes.dtype != np.int64:
            raise InvalidInput("scores", f"scores must be FP32 and classes INT64, got "
                                         f"{scores.dtype} and {classes.dtype}")
        if len(scores) != len(classes):
            raise InvalidInput("classes", f"has {len(classes)} values for {len(scores)} scores")
        latency = get("latency_ms").reshape(-1)
        if latency.size != 1 or not np.isfinite(latency[0]) or latency[0] < 0:
            raise InvalidInput("latency_ms", f"must be one finite value >= 0, got {latency.tolist()}")
        reasons = tuple(_text(v) for v in get("reasons").reshape(-1))
        image = _optional_single(arrays.get("image"), "image")
        predictions = _optional_single(arrays.get("predictions"), "predictions")
        if (image is None) != (predictions is None):
            raise InvalidInput("predictions", "image and predictions come together or not at all")
        return cls(reasons, scores, classes, float(latency[0]), image,
                   None if predictions is None else _text(predictions))


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _optional_single(value, name: str) -> bytes | None:
    if value is None or np.asarray(value).size == 0:
        return None
    value = np.asarray(value).reshape(-1)
    if value.size != 1 or not isinstance(value[0], (bytes, bytearray)):
        raise InvalidInput(name, f"must hold at most one bytes element, got shape {list(value.shape)}")
    return bytes(value[0])


@dataclass(frozen=True)
class MonitorSettings:
    """The monitoring model's config parameters (all optional)."""

    queue_size: int = 1000
    drift: DriftSettings = DriftSettings()
    capture: CaptureSettings | None = None

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> "MonitorSettings":
        drift_default = DriftSettings()
        threshold = params.get("drift_threshold", "")
        try:
            threshold_value = float(threshold) if threshold else drift_default.threshold
        except ValueError:
            raise ValueError(f"config parameter drift_threshold={threshold!r} is not a number") from None
        drift = DriftSettings(
            reference_size=int_parameter(params, "drift_reference_size",
                                         drift_default.reference_size, 1),
            window_size=int_parameter(params, "drift_window_size", drift_default.window_size, 1),
            check_every=int_parameter(params, "drift_check_every", drift_default.check_every, 1),
            threshold=threshold_value)
        capture = None
        directory = params.get("capture_dir", "").strip()
        if directory:
            default = CaptureSettings(Path(directory))
            capture = CaptureSettings(
                Path(directory),
                max_bytes=int_parameter(params, "capture_max_bytes", default.max_bytes, 1),
                max_files=int_parameter(params, "capture_max_files", default.max_files, 2))
        return cls(int_parameter(params, "queue_size", cls.queue_size, 1), drift, capture)


class Monitor:
    """Statistics, drift and capture over the events it is given.

    metrics: an object with the methods of ``TritonMetrics`` (or None): the Prometheus
    side, updated as events are recorded.
    """

    def __init__(self, class_names: Sequence[str], settings: MonitorSettings = MonitorSettings(),
                 metrics: "TritonMetrics | None" = None):
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
        self.started = time.time()

    def name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else f"class_{index}"

    def record(self, event: Event) -> list[dict]:
        """Account for one event; the alerts it raises (as JSON-able dicts)."""
        names = [self.name(int(c)) for c in event.classes]
        with self._lock:
            self.events += 1
            self.reasons.update(event.reasons)
            self.per_class.update(names)
            self.score_hist += np.histogram(event.scores, SCORE_EDGES)[0]
            self.detection_hist += np.histogram([len(event.scores)], COUNT_EDGES)[0]
            self.latencies.append(event.latency_ms)
        alerts = [a.to_dict() for a in self.drift.add(event.scores, len(event.scores))]
        saved = None
        if self.capture is not None and event.image is not None:
            saved = self.capture.save(event.image, event.predictions or "{}")
        with self._lock:
            self.alerts += len(alerts)
        if self.metrics is not None:
            self.metrics.event(event, names, self.drift.latest, alerts, saved is not None,
                               self.capture)
        return alerts

    def drop(self) -> None:
        """An event that found the queue full."""
        with self._lock:
            self.dropped += 1
        if self.metrics is not None:
            self.metrics.dropped()

    def snapshot(self) -> dict:
        """Statistics as JSON-able data (for the 'stats' command)."""
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
            }
        stats["drift_psi"] = {k: round(v, 4) for k, v in self.drift.latest.items()}
        if self.capture is not None:
            stats["capture"] = {"saved": self.capture.saved, "refused": self.capture.refused,
                                "evicted": self.capture.evicted, "files": self.capture.files,
                                "bytes": self.capture.bytes_used,
                                "max_bytes": self.capture.settings.max_bytes,
                                "max_files": self.capture.settings.max_files}
        return stats


class TritonMetrics:
    """The monitoring model's Prometheus metrics, through the Python backend's metrics
    API (``pb_utils.MetricFamily``); they appear on the server's metrics port beside the
    nv_inference_* metrics. ``pb_utils`` is passed in, so tests can hand a double.

    The families must outlive their metrics (the backend refuses to update a metric
    whose family was collected), so both are kept here.
    """

    def __init__(self, pb_utils):
        family = pb_utils.MetricFamily
        self._pb = pb_utils
        self.families = {
            "events": family("monitoring_events_total",
                             "Requests pipeline_bls sent to monitoring, by reason", family.COUNTER),
            "detections": family("monitoring_detections_total",
                                 "Detections in monitored answers, by class", family.COUNTER),
            "score": family("monitoring_detection_score",
                            "Scores of detections in monitored answers", family.HISTOGRAM),
            "per_request": family("monitoring_detections_per_request",
                                  "Detections per monitored answer", family.HISTOGRAM),
            "latency": family("monitoring_request_latency_ms",
                              "pipeline_bls latency of monitored requests (ms)", family.HISTOGRAM),
            "psi": family("monitoring_drift_psi",
                          "Population stability index against the reference window",
                          family.GAUGE),
            "alerts": family("monitoring_alerts_total", "Alerts raised, by kind", family.COUNTER),
            "dropped": family("monitoring_dropped_total",
                              "Events dropped because the monitoring queue was full",
                              family.COUNTER),
            "captured": family("monitoring_captured_total",
                               "Samples written to the capture directory", family.COUNTER),
            "capture_bytes": family("monitoring_capture_bytes",
                                    "Bytes of samples in the capture directory", family.GAUGE),
        }
        self._metrics: dict[tuple[str, tuple], object] = {}
        self.score = self.families["score"].Metric(labels={}, buckets=SCORE_BUCKETS)
        self.per_request = self.families["per_request"].Metric(labels={},
                                                               buckets=DETECTION_BUCKETS)
        self.latency = self.families["latency"].Metric(labels={}, buckets=LATENCY_BUCKETS_MS)

    def _metric(self, family: str, **labels):
        key = (family, tuple(sorted(labels.items())))
        if key not in self._metrics:
            self._metrics[key] = self.families[family].Metric(labels=labels)
        return self._metrics[key]

    def event(self, event: Event, names: Sequence[str], psi: Mapping[str, float],
              alerts: Sequence[dict], saved: bool, capture: CaptureStore | None) -> None:
        for reason in event.reasons:
            self._metric("events", reason=reason).increment(1)
        for name, count in Counter(names).items():
            self._metric("detections", class_name=name).increment(count)
        for score in event.scores.tolist():
            self.score.observe(score)
        self.per_request.observe(float(len(event.scores)))
        self.latency.observe(event.latency_ms)
        for signal, value in psi.items():
            self._metric("psi", signal=signal).set(value)
        for alert in alerts:
            self._metric("alerts", kind=alert["kind"]).increment(1)
        if saved:
            self._metric("captured").increment(1)
        if capture is not None:
            self._metric("capture_bytes").set(capture.bytes_used)

    def dropped(self) -> None:
        self._metric("dropped").increment(1)
