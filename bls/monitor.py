"""What the ``monitoring`` model does with an event, without Triton: checking it,
queueing it, statistics, drift, sample capture, Prometheus metrics and alerts.

The model (models/monitoring/1/model.py) checks each event (``Monitor.parse``), answers
it at once and hands it to one worker thread through an ``EventQueue`` bounded by count
and by bytes; the worker calls ``Monitor.record``. ``Monitor.snapshot`` (the 'stats'
command) and ``Monitor.drop`` run on Triton's threads meanwhile: all the state they read
or write is changed under ``Monitor``'s one lock.

The monitoring model is reachable by any client, so nothing a request says may grow
memory or the metrics without bound. An event is refused (INVALID_ARG) unless its
reasons are ``bls.policy.Reason`` values, its class indices index the model's class
names, its scores are in [0, 1], it has at most MAX_DETECTIONS_LIMIT detections and at
most max_event_bytes bytes. The Prometheus label values are therefore fixed sets:

* ``monitoring_events_total{reason}``: the ``Reason`` values;
* ``monitoring_detections_total{class_name}``: the model's class names;
* ``monitoring_drift_psi{signal}``: ``DriftMonitor.SIGNALS``;
* ``monitoring_alerts_total{kind}``: ``DriftMonitor.ALERT_KINDS``.

As defence in depth, a value outside its set, or past MAX_LABEL_VALUES distinct values
of one family, is counted under ``"other"``.
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
from bls.config import MONITORING_PARAMETERS
from bls.contract import MAX_DETECTIONS_LIMIT
from bls.drift import COUNT_EDGES, SCORE_EDGES, DriftMonitor, DriftSettings
from bls.errors import InvalidInput
from bls.policy import Reason

SCORE_BUCKETS = [round(float(v), 2) for v in SCORE_EDGES[1:]]  # le="0.3", not 0.30000000000000004
DETECTION_BUCKETS = [float(v) for v in COUNT_EDGES[1:-1] - 1] + [100.0]  # le=0,1,2,4,...
LATENCY_BUCKETS_MS = [50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0]
LATENCY_WINDOW = 1000  # requests kept for latency percentiles
REASONS = tuple(r.value for r in Reason)
MAX_LABEL_VALUES = 256  # distinct values of one label per metric family, "other" aside
OTHER = "other"


@dataclass(frozen=True)
class Event:
    """One answered request, as pipeline_bls sent it (bls.contract.MONITORING_INPUTS).
    nbytes: its size as received (what it holds in the queue)."""

    reasons: tuple[str, ...]
    scores: np.ndarray  # float32 [N]
    classes: np.ndarray  # int64 [N], each in [0, number of class names)
    latency_ms: float
    nbytes: int
    image: bytes | None = None
    predictions: str | None = None

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray | None], class_count: int,
                    max_event_bytes: int) -> "Event":
        """Input arrays by name -> Event; raises InvalidInput naming the input and the
        offending value. class_count: the model's number of class names."""
        sizes = {name: _nbytes(value) for name, value in arrays.items() if value is not None}
        nbytes = sum(sizes.values())
        if nbytes > max_event_bytes:
            largest = max(sizes, key=sizes.get)
            raise InvalidInput(largest, f"the event is {nbytes} bytes ({largest}: "
                                        f"{sizes[largest]}), more than the limit "
                                        f"(max_event_bytes) of {max_event_bytes}")

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
        if len(scores) > MAX_DETECTIONS_LIMIT:
            raise InvalidInput("scores", f"has {len(scores)} detections, more than "
                                         f"{MAX_DETECTIONS_LIMIT}")
        bad = np.flatnonzero(~(np.isfinite(scores) & (scores >= 0) & (scores <= 1)))
        if bad.size:
            raise InvalidInput("scores", f"score {scores[bad[0]]} (detection {bad[0]}) is not "
                                         f"in [0, 1]")
        bad = np.flatnonzero((classes < 0) | (classes >= class_count))
        if bad.size:
            raise InvalidInput("classes", f"class index {classes[bad[0]]} (detection {bad[0]}) "
                                          f"is outside [0, {class_count})")
        latency = get("latency_ms").reshape(-1)
        if latency.size != 1 or not np.isfinite(latency[0]) or latency[0] < 0:
            raise InvalidInput("latency_ms", f"must be one finite value >= 0, got {latency.tolist()}")
        reasons = tuple(_text(v) for v in get("reasons").reshape(-1))
        if not reasons:
            raise InvalidInput("reasons", f"is empty; an event has one or more of {list(REASONS)}")
        unknown = next((r for r in reasons if r not in REASONS), None)
        if unknown is not None:
            shown = repr(unknown[:64]) + ("..." if len(unknown) > 64 else "")
            raise InvalidInput("reasons", f"{shown} is not a reason; known: {list(REASONS)}")
        image = _optional_single(arrays.get("image"), "image")
        predictions = _optional_single(arrays.get("predictions"), "predictions")
        if (image is None) != (predictions is None):
            raise InvalidInput("predictions", "image and predictions come together or not at all")
        return cls(reasons, scores, classes, float(latency[0]), nbytes, image,
                   None if predictions is None else _text(predictions))


def _nbytes(value) -> int:
    """Bytes of an input array as received: the elements' lengths for BYTES."""
    value = np.asarray(value)
    if value.dtype != np.object_:
        return value.nbytes
    return sum(len(v) if isinstance(v, (bytes, bytearray)) else len(str(v))
               for v in value.reshape(-1))


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
    """The monitoring model's config parameters (bls.config.MONITORING_PARAMETERS)."""

    queue_size: int
    queue_max_bytes: int
    max_event_bytes: int
    max_subscriptions: int
    drift: DriftSettings
    capture: CaptureSettings | None

    @classmethod
    def from_config(cls, model_config: Mapping) -> "MonitorSettings":
        """From the model's config as ``initialize`` gets it, read strictly through the
        registry: an unknown or malformed parameter raises ValueError naming it."""
        p = MONITORING_PARAMETERS.read(model_config)
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


class EventQueue:
    """What waits for the worker, bounded by count and by bytes (events may carry images,
    so a count alone would let a burst hold gigabytes). Thread-safe; once closed, ``get``
    hands out what is left, then None at once."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: deque[tuple[object, int]] = deque()
        self._bytes = 0
        self.closed = False
        self._changed = threading.Condition()

    def put(self, item, nbytes: int, timeout: float = 0.0) -> bool:
        """Append ``item`` if both bounds allow, waiting up to ``timeout`` s for room;
        False (not queued) if they do not or the queue is closed."""
        def room():
            return self.closed or (len(self._items) < self.max_items
                                   and self._bytes + nbytes <= self.max_bytes)

        with self._changed:
            if not self._changed.wait_for(room, timeout) or self.closed:
                return False
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._changed.notify_all()
            return True

    def get(self, timeout: float):
        """The oldest item; None if none came within ``timeout`` s, or closed and empty."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._items or self.closed, timeout) \
                    or not self._items:
                return None
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._changed.notify_all()
            return item

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def usage(self) -> tuple[int, int]:
        """(items, bytes) waiting."""
        with self._changed:
            return len(self._items), self._bytes


class Monitor:
    """Statistics, drift and capture over the events it is given.

    ``record`` and ``reset_reference`` are the worker's (one thread): the drift monitor
    and the capture store are its alone. Everything ``snapshot`` reads (counters,
    histograms, latencies, the latest PSI, the capture statistics) is changed under
    ``_lock`` and read under it; capture's file writes happen outside it.

    metrics: an object with the methods of ``TritonMetrics`` (or None): the Prometheus
    side, updated under the same lock as the statistics.
    """

    def __init__(self, class_names: Sequence[str], settings: MonitorSettings,
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
        self.psi: dict[str, float] = {}
        self.capture_stats = self._capture_stats()
        self.started = time.time()

    def parse(self, arrays: Mapping[str, np.ndarray | None]) -> Event:
        """Input arrays by name -> a checked Event (Event.from_arrays with this model's
        class names and max_event_bytes)."""
        return Event.from_arrays(arrays, len(self.class_names), self.settings.max_event_bytes)

    def record(self, event: Event) -> list[dict]:
        """Account for one event; the alerts it raises (as JSON-able dicts)."""
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
        """An event that found the queue full."""
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
        """Statistics as JSON-able data (for the 'stats' command), all of one moment."""
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


class TritonMetrics:
    """The monitoring model's Prometheus metrics, through the Python backend's metrics
    API (``pb_utils.MetricFamily``); they appear on the server's metrics port beside the
    nv_inference_* metrics. ``pb_utils`` is passed in, so tests can hand a double.

    Labelled series come only from fixed sets (the module docstring); the families must
    outlive their metrics (the backend refuses to update a metric whose family was
    collected), so both are kept here. Not thread-safe: Monitor calls it under its lock.
    """

    def __init__(self, pb_utils, class_names: Sequence[str]):
        family = pb_utils.MetricFamily
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
        # family -> (label, the values it may take); and the series made so far
        self.labels = {"events": ("reason", set(REASONS)),
                       "detections": ("class_name", set(class_names)),
                       "psi": ("signal", set(DriftMonitor.SIGNALS)),
                       "alerts": ("kind", set(DriftMonitor.ALERT_KINDS))}
        self._series: dict[str, dict[str, object]] = {name: {} for name in self.labels}
        self.score = self.families["score"].Metric(labels={}, buckets=SCORE_BUCKETS)
        self.per_request = self.families["per_request"].Metric(labels={},
                                                               buckets=DETECTION_BUCKETS)
        self.latency = self.families["latency"].Metric(labels={}, buckets=LATENCY_BUCKETS_MS)
        self._dropped = self.families["dropped"].Metric(labels={})
        self._captured = self.families["captured"].Metric(labels={})
        self._capture_bytes = self.families["capture_bytes"].Metric(labels={})

    def _labelled(self, family: str, value: str):
        """The family's metric for one label value; OTHER's for a value outside the
        family's set or past MAX_LABEL_VALUES distinct values."""
        series = self._series[family]
        if value not in series:
            label, allowed = self.labels[family]
            if value not in allowed or len(series) - (OTHER in series) >= MAX_LABEL_VALUES:
                value = OTHER
            if value not in series:
                series[value] = self.families[family].Metric(labels={label: value})
        return series[value]

    def event(self, event: Event, names: Sequence[str], psi: Mapping[str, float],
              alerts: Sequence[dict]) -> None:
        for reason in event.reasons:
            self._labelled("events", reason).increment(1)
        for name, count in Counter(names).items():
            self._labelled("detections", name).increment(count)
        for score in event.scores.tolist():
            self.score.observe(score)
        self.per_request.observe(float(len(event.scores)))
        self.latency.observe(event.latency_ms)
        for signal, value in psi.items():
            self._labelled("psi", signal).set(value)
        for alert in alerts:
            self._labelled("alerts", alert["kind"]).increment(1)

    def captured(self, saved: bool, bytes_used: int) -> None:
        if saved:
            self._captured.increment(1)
        self._capture_bytes.set(bytes_used)

    def dropped(self) -> None:
        self._dropped.increment(1)
