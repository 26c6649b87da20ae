"""Alert streams of the decoupled ``monitoring`` model.

A watcher sends ``command = subscribe`` over a gRPC stream; the model keeps the
request's response sender and sends each alert on it as it happens, then a final
``{"type": "end"}`` response with the FINAL flag after ``max_alerts`` alerts or
``duration_s`` seconds, whichever comes first. This is what decoupled mode is for: any
number of responses to one request, at any time. ``pb_utils`` is passed in.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np

from bls.contract import MONITORING_OUTPUT
from bls.errors import InvalidInput

MAX_DURATION_S = 24 * 3600.0


@dataclass(frozen=True)
class Subscription:
    max_alerts: int = 1000
    duration_s: float = 3600.0

    @classmethod
    def from_parameters(cls, parameters: dict) -> "Subscription":
        unknown = sorted(set(parameters) - {"max_alerts", "duration_s"})
        if unknown:
            raise InvalidInput(unknown[0], "is not a subscribe parameter; known: "
                                           "['duration_s', 'max_alerts']", "parameter")
        try:
            max_alerts = int(parameters.get("max_alerts", cls.max_alerts))
            duration = float(parameters.get("duration_s", cls.duration_s))
        except (TypeError, ValueError):
            raise InvalidInput("max_alerts", f"max_alerts and duration_s must be numbers, "
                                             f"got {parameters}", "parameter") from None
        if max_alerts < 1 or not 0 < duration <= MAX_DURATION_S:
            raise InvalidInput("duration_s", f"need max_alerts >= 1 and 0 < duration_s <= "
                                             f"{MAX_DURATION_S:.0f}, got {max_alerts} and {duration}",
                               "parameter")
        return cls(max_alerts, duration)


def message_response(pb_utils, message: dict):
    """One response carrying ``message`` as JSON in the monitoring output."""
    data = np.array([json.dumps(message).encode()], dtype=np.object_)
    return pb_utils.InferenceResponse([pb_utils.Tensor(MONITORING_OUTPUT.name, data)])


class Subscribers:
    """Open alert streams; thread-safe (execute adds, the worker publishes and expires)."""

    def __init__(self, pb_utils, clock=time.monotonic):
        self._pb = pb_utils
        self._clock = clock
        self._lock = threading.Lock()
        self._open: list[list] = []  # [sender, alerts left, deadline]

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def add(self, sender, subscription: Subscription) -> None:
        sender.send(message_response(self._pb, {
            "type": "subscribed", "max_alerts": subscription.max_alerts,
            "duration_s": subscription.duration_s}))
        with self._lock:
            self._open.append([sender, subscription.max_alerts,
                               self._clock() + subscription.duration_s])

    def publish(self, alert: dict) -> None:
        """Send ``alert`` to every stream; a stream whose client is gone is dropped."""
        with self._lock:
            for entry in list(self._open):
                sender = entry[0]
                try:
                    sender.send(message_response(self._pb, alert))
                except Exception:  # the client went away: nothing left to tell
                    self._open.remove(entry)
                    continue
                entry[1] -= 1
                if entry[1] == 0:
                    self._end(entry, "max_alerts reached")

    def expire(self) -> None:
        now = self._clock()
        with self._lock:
            for entry in [e for e in self._open if e[2] <= now]:
                self._end(entry, "duration_s elapsed")

    def close_all(self, why: str) -> None:
        with self._lock:
            for entry in list(self._open):
                self._end(entry, why)

    def _end(self, entry: list, why: str) -> None:
        self._open.remove(entry)
        try:
            entry[0].send(message_response(self._pb, {"type": "end", "reason": why}),
                          flags=self._pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:
            pass
