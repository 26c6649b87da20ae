"""pipeline_bls's own request metrics, on Triton's metrics port beside the nv_* ones.

Why they exist: pipeline_bls answers each request by its response sender after
``execute`` has returned, so Triton's statistics for it (nv_inference_compute_infer_*,
the statistics API) end at ``execute``'s return, not at the answer; and Triton 2.51 counts
a per-request error response as a success. These counters say what really happened:

  pipeline_requests_total{outcome}        ok | invalid | cancelled | unavailable |
                                          timeout | failed (bls/errors.py)
  pipeline_responses_unsent_total         answers the backend refused to send (the
                                          client had gone, or the response could not
                                          be serialised); logged as well
  pipeline_request_duration_us{stage}     sums, in microseconds, per stage:
      prepare  decode + resize (with the wait for a worker thread)
      model    the mask_rcnn BLS call: its queue, its compute and the IPC both ways
      finish   rescale, paste, encode (with the wait for a worker thread)
      total    from the start of the request's task to its response, ready to send

A stage's mean is its sum over the requests that reached it (``ok`` requests reached all
of them). Counters only, as Triton's own duration metrics are: rates and means come from
differences. ``pb_utils`` is passed in, so this imports without the backend.
"""

from __future__ import annotations

import time

from bls.errors import classify

OUTCOMES = ("ok", "invalid", "cancelled", "unavailable", "timeout", "failed")
STAGES = ("prepare", "model", "finish", "total")
REQUESTS_METRIC = "pipeline_requests_total"
DURATION_METRIC = "pipeline_request_duration_us"
UNSENT_METRIC = "pipeline_responses_unsent_total"


class RequestMetrics:
    """pipeline_bls's request counters: outcomes, stage durations and unsent answers.

    The families are kept on the instance, as the backend refuses to update a metric
    whose family was collected. ``pb_utils`` is passed in.
    """

    def __init__(self, pb_utils):
        family = pb_utils.MetricFamily
        self.requests_family = family(REQUESTS_METRIC, "pipeline_bls requests answered, by "
                                      "outcome", family.COUNTER)
        self.duration_family = family(DURATION_METRIC, "pipeline_bls time per stage, summed "
                                      "over requests, microseconds", family.COUNTER)
        self.requests = {o: self.requests_family.Metric(labels={"outcome": o}) for o in OUTCOMES}
        self.durations = {s: self.duration_family.Metric(labels={"stage": s}) for s in STAGES}
        self.unsent_family = family(UNSENT_METRIC, "pipeline_bls answers the backend refused "
                                    "to send", family.COUNTER)
        self.unsent = self.unsent_family.Metric(labels={})

    def record(self, error: Exception | None, seconds: dict[str, float]) -> None:
        """Count one answered request.

        Args:
            error: the exception it ended with, or None for an answer (bls/errors.py
                classify gives its outcome).
            seconds: wall seconds by stage (STAGES) for the stages it went through.
        """
        self.requests[classify(error)[1]].increment(1)
        for stage, value in seconds.items():
            self.durations[stage].increment(value * 1e6)


START_METRIC = "bls_model_start_time_seconds"


class ModelStart:
    """Set ``bls_model_start_time_seconds{model}`` to when this model instance was initialized.

    The value is Unix time. Each of the project's Python models sets it at load, so a
    change means the model was loaded again: after its stub died and the watchdog
    reloaded it, or a deliberate reload (the alert rule in deploy/ reads it with
    ``changes()``). Keep the object: the backend drops an orphaned family's metrics."""

    def __init__(self, pb_utils, model: str):

        self.family = pb_utils.MetricFamily(START_METRIC, "When the model instance was "
                                            "initialized, Unix seconds", pb_utils.MetricFamily.GAUGE)
        self.metric = self.family.Metric(labels={"model": model})
        self.metric.set(time.time())


class MonitoringCalls:
    """Count what became of pipeline_bls's monitoring events, by outcome.

    Outcomes: ok (acknowledged), failed (monitoring unloaded, raising, refusing or killed),
    timeout (acknowledged later than the policy's timeout_ms), dropped (the queue held
    max_pending_events events or max_queued_bytes), abandoned (still queued or unacknowledged
    when pipeline_bls stopped). Prometheus counters
    ``pipeline_monitoring_calls_total{outcome}`` and
    ``pipeline_monitoring_captures_skipped_total``; ``pb_utils`` is passed in. The
    families are kept: the backend refuses to update an orphaned metric."""

    OUTCOMES = ("ok", "failed", "timeout", "dropped", "abandoned")

    def __init__(self, pb_utils):
        family = pb_utils.MetricFamily
        self.family = family("pipeline_monitoring_calls_total",
                             "Monitoring events pipeline_bls sent, by outcome", family.COUNTER)
        self.metrics = {o: self.family.Metric(labels={"outcome": o}) for o in self.OUTCOMES}
        self.skipped_family = family("pipeline_monitoring_captures_skipped_total",
                                     "Captures sent without their image: over "
                                     "max_capture_bytes", family.COUNTER)
        self.captures_skipped = self.skipped_family.Metric(labels={})

    def count(self, outcome: str, n: int = 1) -> None:
        """Add ``n`` events to ``outcome`` (one of OUTCOMES)."""
        if n:
            self.metrics[outcome].increment(n)
