"""When pipeline_bls tells the ``monitoring`` model about a request, and what it sends.

The policy is pipeline_bls's config parameter ``monitoring_policy`` (JSON), so operators
change it in the repository. A request is sent when any trigger fires; the reasons go
with it, so monitoring can count why it was sent. Nothing here waits on monitoring:
pipeline_bls sends events in the background (see models/pipeline_bls/1/model.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Mapping, Sequence

import numpy as np

from bls.contract import MONITORING_INPUTS

POLICY_PARAMETER = "monitoring_policy"


class Capture(str, Enum):
    """Which sent requests carry their image and answer, for monitoring to store."""

    NONE = "none"
    FLAGGED = "flagged"  # sent for a reason other than plain sampling
    ALL = "all"


class Reason(str, Enum):
    SAMPLED = "sampled"
    LOW_SCORE = "low_score"
    NO_DETECTIONS = "no_detections"
    WATCHED_CLASS = "watched_class"
    SLOW = "slow"


@dataclass(frozen=True)
class MonitoringPolicy:
    """sample_rate: fraction of all requests sent, in [0, 1].
    low_best_score: send when the best score is below this (a request with detections).
    no_detections: send requests whose answer is empty.
    watched_classes: class names; send when any detection has one of them.
    slow_ms: send when pipeline_bls took longer than this.
    capture: which sent requests carry image bytes and predictions.
    max_capture_bytes: a captured image larger than this goes without image and
        predictions (counted in pipeline_monitoring_captures_skipped_total).
    max_in_flight: events waiting or being sent at once; more are dropped and counted.
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
    max_in_flight: int = 64
    max_queued_bytes: int = 64 * 1024 * 1024
    timeout_ms: float = 1000.0

    @property
    def enabled(self) -> bool:
        return (self.sample_rate > 0 or self.low_best_score is not None or self.no_detections
                or bool(self.watched_classes) or self.slow_ms is not None)

    @classmethod
    def from_json(cls, text: str | None) -> "MonitoringPolicy":
        """Parse the config parameter; an empty one disables monitoring. Raises ValueError
        naming the field and the value."""
        if not text or not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{POLICY_PARAMETER} is not JSON: {e}: {text!r}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{POLICY_PARAMETER} must be a JSON object, got {text!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{POLICY_PARAMETER}: unknown field(s) {unknown}; "
                             f"known: {sorted(known)}")
        values: dict = {}
        for name, value in raw.items():
            values[name] = _field(name, value)
        return cls(**values)

    def reasons(self, scores: np.ndarray, class_names: Sequence[str], latency_ms: float,
                draw: float) -> list[Reason]:
        """Why this answer should be sent (empty: not at all).

        scores: float32 [N] descending; class_names: N names; draw: uniform in [0, 1),
        the caller's random number for sampling (a parameter so tests can choose it).
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
        if self.capture is Capture.ALL:
            return bool(reasons)
        if self.capture is Capture.FLAGGED:
            return any(r is not Reason.SAMPLED for r in reasons)
        return False


def _field(name: str, value):
    def number(lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                math.isnan(value) or not lo <= value <= hi:
            raise ValueError(f"{POLICY_PARAMETER}.{name} must be a number in [{lo}, {hi}], "
                             f"got {value!r}")
        return float(value)

    if name == "sample_rate":
        return number(0.0, 1.0)
    if name == "low_best_score":
        return None if value is None else number(0.0, 1.0)
    if name == "slow_ms":
        return None if value is None else number(0.0, math.inf)
    if name == "timeout_ms":
        return number(1.0, 600_000.0)
    if name in ("max_in_flight", "max_queued_bytes", "max_capture_bytes"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{POLICY_PARAMETER}.{name} must be a whole number >= 1, "
                             f"got {value!r}")
        return value
    if name == "no_detections":
        if not isinstance(value, bool):
            raise ValueError(f"{POLICY_PARAMETER}.no_detections must be true or false, "
                             f"got {value!r}")
        return value
    if name == "watched_classes":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{POLICY_PARAMETER}.watched_classes must be a list of class "
                             f"names, got {value!r}")
        return tuple(value)
    if name == "capture":
        try:
            return Capture(value)
        except ValueError:
            raise ValueError(f"{POLICY_PARAMETER}.capture must be one of "
                             f"{[c.value for c in Capture]}, got {value!r}") from None
    raise AssertionError(name)


def event_inputs(reasons: Sequence[Reason], answer: Mapping[str, np.ndarray], latency_ms: float,
                 image: bytes | None) -> dict[str, np.ndarray]:
    """The monitoring inputs (bls.contract.MONITORING_INPUTS, no ``command``) for one
    answered request. ``image`` is given only when the policy captures it; then the answer
    goes along as JSON (predictions), so a stored sample can be replayed and inspected."""
    specs = {spec.name: spec for spec in MONITORING_INPUTS}
    captured = image is not None
    values = {
        "reasons": np.array([r.value.encode() for r in reasons], dtype=np.object_),
        "scores": answer["scores"].astype(np.float32, copy=False),
        "classes": answer["classes"].astype(np.int64, copy=False),
        "latency_ms": np.array([latency_ms], np.float32),
        "image": np.array([image] if captured else [], dtype=np.object_),
        "predictions": np.array([predictions_json(answer).encode()] if captured else [],
                                dtype=np.object_),
    }
    return {name: value.astype(specs[name].numpy_dtype, copy=False)
            for name, value in values.items()}


def predictions_json(answer: Mapping[str, np.ndarray]) -> str:
    """The answer as JSON: boxes, scores, classes, class names, RLE masks (text), size."""
    def text(v):
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    return json.dumps({
        "image_size": [int(v) for v in answer["image_size"]],
        "boxes": np.round(answer["boxes"].astype(float), 3).tolist(),
        "scores": np.round(answer["scores"].astype(float), 5).tolist(),
        "classes": answer["classes"].astype(int).tolist(),
        "class_names": [text(v) for v in answer["class_names"]],
        "masks_rle": [text(v) for v in answer["masks_rle"]],
    })


class MonitoringCalls:
    """pipeline_bls's counters of what became of its monitoring events, by outcome:
    ok (acknowledged), failed (monitoring unloaded, raising, refusing or killed),
    timeout (acknowledged later than the policy's timeout_ms), dropped (the queue held
    max_in_flight events or max_queued_bytes), abandoned (still queued or unacknowledged
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
        if n:
            self.metrics[outcome].increment(n)
