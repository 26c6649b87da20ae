"""Export the monitoring model's statistics as Prometheus metrics (``TritonMetrics``).

Label values come from fixed sets, so no client can grow the metrics without bound:

* ``monitoring_events_total{reason}``: the ``Reason`` values;
* ``monitoring_detections_total{class_name}``: the model's class names;
* ``monitoring_drift_psi{signal}``: ``DriftMonitor.SIGNALS``;
* ``monitoring_alerts_total{kind}``: ``DriftMonitor.ALERT_KINDS``.

As defence in depth, a value outside its set, or past MAX_LABEL_VALUES distinct values
of one family, is counted under ``"other"``.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

from bls.monitoring.drift import COUNT_EDGES, SCORE_EDGES, DriftMonitor
from bls.monitoring.event import REASONS, Event

SCORE_BUCKETS = [round(float(v), 2) for v in SCORE_EDGES[1:]]  # le="0.3", not 0.30000000000000004
DETECTION_BUCKETS = [float(v) for v in COUNT_EDGES[1:-1] - 1] + [100.0]  # le=0,1,2,4,...
LATENCY_BUCKETS_MS = [50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0]
MAX_LABEL_VALUES = 256  # distinct values of one label per metric family, "other" aside
OTHER = "other"


class TritonMetrics:
    """Keep the monitoring model's Prometheus metrics, through ``pb_utils.MetricFamily``.

    They appear on the server's metrics port beside the
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
        """Count one recorded event.

        Args:
            event: the event.
            names: the class name of each of its detections.
            psi: the latest PSI by signal.
            alerts: the alerts it raised (DriftAlert.to_dict).
        """
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
        """Count a capture (if ``saved``) and set the capture directory's bytes."""
        if saved:
            self._captured.increment(1)
        self._capture_bytes.set(bytes_used)

    def dropped(self) -> None:
        """Count an event dropped at a full queue."""
        self._dropped.increment(1)
