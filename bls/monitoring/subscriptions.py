"""Stream alerts to the decoupled ``monitoring`` model's subscribers.

A watcher sends ``command = subscribe`` over a gRPC stream; the model keeps the
request's response sender and sends each alert on it as it happens, then a final
``{"type": "end"}`` response with the FINAL flag after ``max_alerts`` alerts or
``duration_s`` seconds, whichever comes first. This is what decoupled mode is for: any
number of responses to one request, at any time. Each open stream holds a sender until
it ends, so at most max_subscriptions are open; one more is answered UNAVAILABLE.
``pb_utils`` is passed in.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np

from bls.contract.parameters import Parameter, ParameterSet, number, whole
from bls.contract.tensors import MONITORING_NAME, MONITORING_OUTPUT
from bls.errors import Unavailable

MAX_DURATION_S = 24 * 3600.0


@dataclass(frozen=True)
class Subscription:
    """One 'subscribe' request's bounds: the stream ends after max_alerts or duration_s."""

    max_alerts: int = 1000
    duration_s: float = 3600.0

    @classmethod
    def from_parameters(cls, parameters: dict) -> "Subscription":
        """Read the subscribe request's parameters (SUBSCRIBE_PARAMETERS).

        Raises:
            InvalidInput: naming an unknown or malformed parameter.
        """
        return cls(**SUBSCRIBE_PARAMETERS.read(parameters))


SUBSCRIBE_PARAMETERS = ParameterSet(MONITORING_NAME, "subscribe parameter", (
    Parameter("max_alerts", whole(1), Subscription.max_alerts, "alerts before the stream ends"),
    Parameter("duration_s", number(1e-3, MAX_DURATION_S), Subscription.duration_s,
              "seconds before the stream ends"),
))


def message_response(pb_utils, message: dict):
    """Build one response carrying ``message`` as JSON in the monitoring output."""
    data = np.array([json.dumps(message).encode()], dtype=np.object_)
    return pb_utils.InferenceResponse([pb_utils.Tensor(MONITORING_OUTPUT.name, data)])


@dataclass
class _Stream:
    sender: object
    alerts_left: int
    deadline: float


class Subscribers:
    """Keep the open alert streams, at most ``max_open``; thread-safe (execute adds, the worker
    publishes and expires). A stream that ends (max_alerts, duration_s, its client gone,
    the model unloaded) frees its slot."""

    def __init__(self, pb_utils, max_open: int, clock=time.monotonic):
        self._pb = pb_utils
        self.max_open = max_open
        self._clock = clock
        self._lock = threading.Lock()
        self._open: list[_Stream] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def add(self, sender, subscription: Subscription) -> None:
        """Open a stream on ``sender``, and tell its client it is subscribed.

        Raises:
            Unavailable: (answered UNAVAILABLE) ``max_open`` streams are open.
        """
        with self._lock:
            if len(self._open) >= self.max_open:
                raise Unavailable(f"{len(self._open)} alert streams are open, the limit "
                                  f"(max_subscriptions) is {self.max_open}; subscribe again "
                                  f"when one ends (max_alerts, duration_s) or raise "
                                  f"max_subscriptions")
            sender.send(message_response(self._pb, {
                "type": "subscribed", "max_alerts": subscription.max_alerts,
                "duration_s": subscription.duration_s}))
            self._open.append(_Stream(sender, subscription.max_alerts,
                                      self._clock() + subscription.duration_s))

    def publish(self, alert: dict) -> None:
        """Send ``alert`` to every stream; a stream whose client is gone is dropped."""
        with self._lock:
            for stream in list(self._open):
                try:
                    stream.sender.send(message_response(self._pb, alert))
                except Exception:  # the client went away: nothing left to tell
                    self._open.remove(stream)
                    continue
                stream.alerts_left -= 1
                if stream.alerts_left == 0:
                    self._end(stream, "max_alerts reached")

    def expire(self) -> None:
        """End the streams past their duration_s, and those whose requests Triton
        cancelled (the client cancelled its gRPC stream or went away; the final flag is
        still owed)."""
        now = self._clock()
        with self._lock:
            for stream in list(self._open):
                if stream.sender.is_cancelled():
                    self._end(stream, "cancelled")
                elif stream.deadline <= now:
                    self._end(stream, "duration_s elapsed")

    def close_all(self, why: str) -> None:
        """End every stream, telling its client ``why``."""
        with self._lock:
            for stream in list(self._open):
                self._end(stream, why)

    def _end(self, stream: _Stream, why: str) -> None:
        self._open.remove(stream)
        try:
            stream.sender.send(message_response(self._pb, {"type": "end", "reason": why}),
                               flags=self._pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:
            pass
