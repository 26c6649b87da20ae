"""pipeline_bls's own request metrics, on Triton's metrics port beside the nv_* ones.

Why they exist: Triton 2.51 counts a per-request error response as a success, and its
statistics say nothing of the stages inside pipeline_bls. These counters say what really
happened:

  pipeline_requests_total{outcome}        ok | invalid | cancelled | unavailable |
                                          timeout | failed (bls/errors.py); probe: a
                                          health probe answered (python -m client probe)
  pipeline_request_duration_us{stage}     sums, in microseconds, per stage:
      prepare  decode + resize (with the wait for a CPU slot, worker_threads)
      model    the mask_rcnn BLS call: its queue, its compute and the IPC both ways
      finish   rescale, paste, encode (with the wait for a CPU slot)
      total    from execute reading the request to its response, ready to send
  pipeline_request_cpu_us{stage}          sums, in microseconds, of the CPU time of the
                                          thread that ran the stage: prepare | finish.
                                          Against the stub's CPU, it splits what the
                                          pipeline computes from what serving it costs
                                          (docs/benchmarks.md, 'Where the time goes')

A stage's mean is its sum over the requests that reached it (``ok`` requests reached all
of them). Counters only, as Triton's own duration metrics are: rates and means come from
differences.

In the stub every ``Metric.increment`` is a blocking round trip to the backend process,
so these counters are kept in memory (``CounterBuffer``) and handed to the backend by one
thread of their own, every FLUSH_INTERVAL_S and when the model stops: a request's path
costs no IPC for them, and a scrape sees a count at most that much later than the answer.
``pb_utils`` is passed in, so this imports without the backend.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from bls.errors import classify

OUTCOMES = ("ok", "invalid", "cancelled", "unavailable", "timeout", "failed", "probe")
STAGES = ("prepare", "model", "finish", "total")
REQUESTS_METRIC = "pipeline_requests_total"
DURATION_METRIC = "pipeline_request_duration_us"
CPU_METRIC = "pipeline_request_cpu_us"
CPU_STAGES = ("prepare", "finish")
# How stale a scraped count may be: 250 ms, well under Prometheus' scrape intervals.
FLUSH_INTERVAL_S = 0.25


class CounterBuffer:
    """Count in memory, and hand the sums to the backend's counters from one thread.

    ``counter(metric)`` wraps a backend counter; its ``increment`` only adds under a lock
    (no IPC). A daemon thread flushes every ``interval_s``; ``flush()`` does it now,
    ``close()`` flushes a last time and stops the thread. A failed flush is reported to
    ``on_error`` once per distinct message and its counts kept for the next flush.

    Args:
        interval_s: seconds between flushes.
        on_error: called with a message when the backend refuses an increment.
        name: the thread's name.
    """

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S,
                 on_error: Callable[[str], None] = lambda message: None,
                 name: str = "pipeline_bls-metrics"):
        self.interval_s = interval_s
        self._on_error = on_error
        self._counters: list[BufferedCounter] = []
        self._lock = threading.Lock()  # the pending sums
        self._flushing = threading.Lock()  # one flush at a time, in order
        self._stop = threading.Event()
        self._flushed = threading.Condition()
        self._generation = 0  # flushes started
        self._done = 0  # flushes ended
        self._reported: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def counter(self, metric) -> "BufferedCounter":
        """Wrap a backend counter ``metric`` (anything with ``increment(value)``)."""
        counter = BufferedCounter(self, metric)
        with self._lock:
            self._counters.append(counter)
        return counter

    def flush(self) -> None:
        """Hand every pending sum to its backend counter now (blocking IPCs, one each)."""
        with self._flushing:
            with self._flushed:
                self._generation += 1
                generation = self._generation
            with self._lock:
                due = [(c, c.pending) for c in self._counters if c.pending]
                for counter, _ in due:
                    counter.pending = 0.0
            for counter, value in due:
                try:
                    counter.metric.increment(value)
                except Exception as e:  # kept for the next flush, reported once
                    with self._lock:
                        counter.pending += value
                    message = f"metrics not flushed: {type(e).__name__}: {e}"
                    if message not in self._reported:
                        self._reported.add(message)
                        self._on_error(message)
            with self._flushed:
                self._done = generation
                self._flushed.notify_all()

    def wait_flushed(self, timeout: float = 5.0) -> bool:
        """Wait until a flush that began after this call has ended (what was counted
        before the call is then in the backend's counters); False after ``timeout`` s."""
        with self._flushed:
            after = self._generation
            return self._flushed.wait_for(lambda: self._done > after, timeout)

    def close(self) -> None:
        """Stop the thread, then flush what is left."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()


class BufferedCounter:
    """A backend counter counted in memory; its CounterBuffer flushes it."""

    def __init__(self, buffer: CounterBuffer, metric):
        self.metric = metric
        self.pending = 0.0
        self._buffer = buffer

    def increment(self, value: float) -> None:
        """Add ``value`` (>= 0) for the next flush; no IPC."""
        if value < 0:
            raise ValueError(f"a counter only goes up, got increment({value})")
        with self._buffer._lock:
            self.pending += value


class RequestMetrics:
    """pipeline_bls's request counters: outcomes and stage durations.

    The families are kept on the instance, as the backend refuses to update a metric
    whose family was collected. ``pb_utils`` is passed in; ``buffer`` counts in memory
    (None: each increment goes to the backend at once).
    """

    def __init__(self, pb_utils, buffer: CounterBuffer | None = None):
        wrap = buffer.counter if buffer is not None else (lambda metric: metric)
        family = pb_utils.MetricFamily
        self.requests_family = family(REQUESTS_METRIC, "pipeline_bls requests answered, by "
                                      "outcome", family.COUNTER)
        self.duration_family = family(DURATION_METRIC, "pipeline_bls time per stage, summed "
                                      "over requests, microseconds", family.COUNTER)
        self.requests = {o: wrap(self.requests_family.Metric(labels={"outcome": o}))
                         for o in OUTCOMES}
        self.durations = {s: wrap(self.duration_family.Metric(labels={"stage": s}))
                          for s in STAGES}
        self.cpu_family = family(CPU_METRIC, "pipeline_bls CPU time of its threads per "
                                 "stage, summed over requests, microseconds", family.COUNTER)
        self.cpu = {s: wrap(self.cpu_family.Metric(labels={"stage": s})) for s in CPU_STAGES}

    def record(self, error: Exception | None, seconds: dict[str, float],
               cpu_seconds: dict[str, float] | None = None, probe: bool = False) -> None:
        """Count one answered request.

        Args:
            error: the exception it ended with, or None for an answer (bls/errors.py
                classify gives its outcome; a probe answered is "probe").
            seconds: wall seconds by stage (STAGES) for the stages it went through.
            cpu_seconds: thread CPU seconds by stage (CPU_STAGES) for those it went through.
            probe: the request was a health probe.
        """
        self.requests["probe" if probe and error is None else classify(error)[1]].increment(1)
        for stage, value in seconds.items():
            self.durations[stage].increment(value * 1e6)
        for stage, value in (cpu_seconds or {}).items():
            self.cpu[stage].increment(value * 1e6)


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
    ``pipeline_monitoring_captures_skipped_total``; ``pb_utils`` is passed in, and
    ``buffer`` as RequestMetrics'. The families are kept: the backend refuses to update
    an orphaned metric."""

    OUTCOMES = ("ok", "failed", "timeout", "dropped", "abandoned")

    def __init__(self, pb_utils, buffer: CounterBuffer | None = None):
        wrap = buffer.counter if buffer is not None else (lambda metric: metric)
        family = pb_utils.MetricFamily
        self.family = family("pipeline_monitoring_calls_total",
                             "Monitoring events pipeline_bls sent, by outcome", family.COUNTER)
        self.metrics = {o: wrap(self.family.Metric(labels={"outcome": o}))
                        for o in self.OUTCOMES}
        self.skipped_family = family("pipeline_monitoring_captures_skipped_total",
                                     "Captures sent without their image: over "
                                     "max_capture_bytes", family.COUNTER)
        self.captures_skipped = wrap(self.skipped_family.Metric(labels={}))

    def count(self, outcome: str, n: int = 1) -> None:
        """Add ``n`` events to ``outcome`` (one of OUTCOMES)."""
        if n:
            self.metrics[outcome].increment(n)
