"""Decide when pipeline_bls tells the ``monitoring`` model about a request, and what it sends.

The policy is pipeline_bls's config parameter ``monitoring_policy`` (JSON), so operators
change it in the repository. A request is sent when any trigger fires; the reasons go
with it, so monitoring can count why it was sent. Nothing here waits on monitoring:
pipeline_bls sends events in the background (bls/orchestration/sender.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np

from bls.contract.parameters import Parameter, ParameterSet, flag, names, number, one_of, whole
from bls.contract.tensors import PIPELINE_NAME
from bls.errors import InvalidInput

POLICY_PARAMETER = "monitoring_policy"


class Capture(str, Enum):
    """Which sent requests carry their image and answer, for monitoring to store."""

    NONE = "none"
    FLAGGED = "flagged"  # sent for a reason other than plain sampling
    ALL = "all"


class Reason(str, Enum):
    """Why a request is sent to monitoring: one per trigger of the policy."""

    SAMPLED = "sampled"
    LOW_SCORE = "low_score"
    NO_DETECTIONS = "no_detections"
    WATCHED_CLASS = "watched_class"
    SLOW = "slow"


@dataclass(frozen=True)
class MonitoringPolicy:
    """Decide which answered requests go to monitoring, and bound what waits to go.

    Attributes:
        sample_rate: fraction of all requests sent, in [0, 1].
        low_best_score: send when the best score is below this (a request with
            detections).
        no_detections: send requests whose answer is empty.
        watched_classes: class names; send when any detection has one of them.
        slow_ms: send when pipeline_bls took longer than this.
        capture: which sent requests carry image bytes and predictions.
        max_capture_bytes: a captured image larger than this goes without image and
            predictions (counted in pipeline_monitoring_captures_skipped_total).
        max_pending_events: events waiting or being sent at once; more are dropped and
            counted.
        max_queued_bytes: bytes of those events (images included); more are dropped.
        timeout_ms: an event acknowledged later than this counts as ``timeout`` (the
            answer never waits for it).
    """

    sample_rate: float = 0.0
    low_best_score: float | None = None
    no_detections: bool = False
    watched_classes: tuple[str, ...] = ()
    slow_ms: float | None = None
    capture: Capture = Capture.NONE
    max_capture_bytes: int = 8 * 1024 * 1024
    max_pending_events: int = 64
    max_queued_bytes: int = 64 * 1024 * 1024
    timeout_ms: float = 1000.0

    @property
    def enabled(self) -> bool:
        """Whether any trigger can fire."""
        return (self.sample_rate > 0 or self.low_best_score is not None or self.no_detections
                or bool(self.watched_classes) or self.slow_ms is not None)

    @classmethod
    def from_json(cls, text: str | None) -> "MonitoringPolicy":
        """Parse the config parameter (POLICY_FIELDS); an empty one disables monitoring.

        Raises:
            InvalidInput: (a ValueError) naming the field and the value.
        """
        if not text or not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(POLICY_PARAMETER, f"is not JSON: {e}: {text!r}",
                               "config parameter") from None
        if not isinstance(raw, dict):
            raise InvalidInput(POLICY_PARAMETER, f"must be a JSON object, got {text!r}",
                               "config parameter")
        values = POLICY_FIELDS.read(raw)
        values["capture"] = Capture(values["capture"])
        return cls(**values)

    def reasons(self, scores: np.ndarray, class_names: Sequence[str], latency_ms: float,
                draw: float) -> list[Reason]:
        """Say why this answer should be sent (empty: not at all).

        Args:
            scores: float32 [N], descending.
            class_names: the N detections' class names.
            latency_ms: the request's time in pipeline_bls.
            draw: uniform in [0, 1), the caller's random number for sampling (a
                parameter so tests can choose it).
        """
        reasons = []
        if draw < self.sample_rate:
            reasons.append(Reason.SAMPLED)
        if self.low_best_score is not None and len(scores) and \
                float(np.max(scores)) < self.low_best_score:
            reasons.append(Reason.LOW_SCORE)
        if self.no_detections and len(scores) == 0:
            reasons.append(Reason.NO_DETECTIONS)
        if self.watched_classes and not set(self.watched_classes).isdisjoint(class_names):
            reasons.append(Reason.WATCHED_CLASS)
        if self.slow_ms is not None and latency_ms > self.slow_ms:
            reasons.append(Reason.SLOW)
        return reasons

    def captures(self, reasons: Sequence[Reason]) -> bool:
        """Whether an event sent for ``reasons`` carries its image and predictions."""
        if self.capture is Capture.ALL:
            return bool(reasons)
        if self.capture is Capture.FLAGGED:
            return any(r is not Reason.SAMPLED for r in reasons)
        return False


_DEFAULT = MonitoringPolicy()
# The fields of monitoring_policy, read by the registry's rules (bls/contract/parameters.py).
POLICY_FIELDS = ParameterSet(PIPELINE_NAME, f"{POLICY_PARAMETER} field", (
    Parameter("sample_rate", number(0.0, 1.0), _DEFAULT.sample_rate, "fraction sent"),
    Parameter("low_best_score", number(0.0, 1.0), _DEFAULT.low_best_score,
              "send when the best score is below this"),
    Parameter("no_detections", flag, _DEFAULT.no_detections, "send empty answers"),
    Parameter("watched_classes", names, _DEFAULT.watched_classes,
              "send answers with one of these classes"),
    Parameter("slow_ms", number(0.0), _DEFAULT.slow_ms, "send slower requests"),
    Parameter("capture", one_of(*(c.value for c in Capture)), _DEFAULT.capture.value,
              "which sent requests carry their image"),
    Parameter("max_capture_bytes", whole(1), _DEFAULT.max_capture_bytes,
              "larger images go without image"),
    Parameter("max_pending_events", whole(1), _DEFAULT.max_pending_events,
              "events waiting or being sent at once"),
    Parameter("max_queued_bytes", whole(1), _DEFAULT.max_queued_bytes,
              "bytes of those events"),
    Parameter("timeout_ms", number(1.0, 600_000.0), _DEFAULT.timeout_ms,
              "acknowledged later: counted as timeout"),
))
