"""Send monitoring events to the ``monitoring`` model off the request path.

pipeline_bls tells the decoupled ``monitoring`` model about some answered requests
(bls/monitoring/policy.py). Monitoring must never slow or break an answer, so events share nothing
with the answers: not the event loop, not its default executor (which BLS
``async_exec`` uses: a hung monitoring there held every model call, Triton 2.51), not the
worker threads. ``EventSender`` owns one thread that makes the BLS calls with the
blocking ``exec``, and a queue bounded by count and by bytes in front of it. ``offer``
never blocks: an event that does not fit is dropped and counted. A monitoring model
that hangs holds that one thread and nothing else; its events are counted as they end
(``timeout`` when acknowledged late, ``failed`` on an error) or as they are dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from bls.backend.metrics import MonitoringCalls
from bls.contract.tensors import MONITORING_NAME, MONITORING_OUTPUT
from bls.monitoring.event import event_inputs
from bls.monitoring.policy import MonitoringPolicy, Reason


@dataclass(frozen=True)
class PendingEvent:
    """Hold what a monitoring event is built from, until the sender's thread builds it.

    Building it there costs the answer nothing.

    Attributes:
        reasons: why the policy sends it.
        answer: the pipeline's output arrays by name (no batch dim), not modified after
            the answer was sent.
        latency_ms: the request's time in pipeline_bls.
        image: the encoded image when captured, else None.
    """

    reasons: tuple[Reason, ...]
    answer: Mapping[str, np.ndarray]
    latency_ms: float
    image: bytes | None

    @property
    def nbytes(self) -> int:
        """Estimate the bytes the event holds while queued, for the queue's byte bound.

        That is the image and, when captured, the predictions JSON (bounded by its RLE
        strings)."""
        if self.image is None:
            return 256 + 12 * len(self.answer["scores"])
        rle = sum(len(m) for m in self.answer["masks_rle"])
        return 256 + len(self.image) + 2 * rle + 160 * len(self.answer["scores"])


class EventSender:
    """Send monitoring events from one thread of its own, through a bounded queue.

    ``offer(reasons, answer, latency_ms, image)`` from any thread; ``close()`` at
    unload.

    Args:
        pb_utils: ``triton_python_backend_utils``, or bls.testing's double.
        policy: its bounds (max_pending_events, max_queued_bytes, max_capture_bytes,
            timeout_ms).
        calls: the counters of what became of each event.
        name: the thread's name.
    """

    def __init__(self, pb_utils, policy: MonitoringPolicy, calls: MonitoringCalls,
                 name: str = "pipeline_bls-monitoring"):
        self._pb = pb_utils
        self.policy = policy
        self.calls = calls
        self._queue: deque[PendingEvent] = deque()
        self._queued_bytes = 0
        self._busy = 0  # events being sent (0 or 1)
        self._closed = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def offer(self, reasons: Sequence[Reason], answer: Mapping[str, np.ndarray],
              latency_ms: float, image: bytes | None) -> bool:
        """Queue an event without blocking.

        A captured image over max_capture_bytes goes without image and predictions.

        Args:
            reasons: why the policy sends it.
            answer: the pipeline's output arrays by name (no batch dim); not modified
                afterwards.
            latency_ms: the request's time in pipeline_bls.
            image: the encoded image when captured, else None.

        Returns:
            True if queued; False (and counted ``dropped``) when it does not fit.
        """
        if image is not None and len(image) > self.policy.max_capture_bytes:
            self.calls.captures_skipped.increment(1)
            image = None
        event = PendingEvent(tuple(reasons), answer, latency_ms, image)
        with self._cv:
            fits = (not self._closed
                    and len(self._queue) + self._busy < self.policy.max_pending_events
                    and self._queued_bytes + event.nbytes <= self.policy.max_queued_bytes)
            if fits:
                self._queue.append(event)
                self._queued_bytes += event.nbytes
                self._cv.notify()
        if not fits:
            self.calls.count("dropped")
        return fits

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                event = self._queue.popleft()
                self._queued_bytes -= event.nbytes
                self._busy = 1
            outcome = self._send(event)
            with self._cv:
                self._busy = 0
                if self._closed:  # close() counted it as abandoned already
                    return
            self.calls.count(outcome)

    def _send(self, event: PendingEvent) -> str:
        """One blocking BLS call; its outcome. The request also carries timeout_ms as its
        Triton timeout, which Triton 2.51 does not enforce for a model without dynamic
        batching: lateness is judged here."""
        start = time.monotonic()
        try:
            inputs = event_inputs(event.reasons, event.answer, event.latency_ms, event.image)
            request = self._pb.InferenceRequest(
                model_name=MONITORING_NAME, requested_output_names=[MONITORING_OUTPUT.name],
                inputs=[self._pb.Tensor(name, value) for name, value in inputs.items()],
                timeout=int(self.policy.timeout_ms * 1000))
            failed = any(r.has_error() for r in request.exec(decoupled=True))
        except Exception:  # monitoring unloaded, killed, or this model stopping
            failed = True
        if failed:
            return "failed"
        late = (time.monotonic() - start) * 1000 > self.policy.timeout_ms
        return "timeout" if late else "ok"

    def close(self, wait_s: float = 1.0) -> None:
        """Stop taking events; count what is queued or still unacknowledged as ``abandoned``.

        Waits at most ``wait_s`` for the thread (a hung monitoring call keeps it; it is a
        daemon thread and ends with the process)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            abandoned = len(self._queue) + self._busy
            self._queue.clear()
            self._queued_bytes = 0
            self._cv.notify_all()
        self.calls.count("abandoned", abandoned)
        self._thread.join(wait_s)

    def pending(self) -> int:
        """The number of events queued or being sent."""
        with self._cv:
            return len(self._queue) + self._busy
