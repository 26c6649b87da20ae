"""Write and read the monitoring event's wire format (bls/contract/tensors.py MONITORING_INPUTS).

What pipeline_bls sends about one answered request (``event_inputs``) and what the
monitoring model reads back (``Event.from_arrays``).

The monitoring model is reachable by any client, so nothing an event says may grow
memory or the metrics without bound: an event is refused (INVALID_ARG) unless its
reasons are ``Reason`` values, its class indices index the model's class names, its
scores are in [0, 1], it has at most MAX_DETECTIONS_LIMIT detections and at most
max_event_bytes bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from bls.contract.parameters import MAX_DETECTIONS_LIMIT
from bls.contract.tensors import MONITORING_INPUTS
from bls.errors import InvalidInput
from bls.monitoring.policy import Reason

REASONS = tuple(r.value for r in Reason)


def event_inputs(reasons: Sequence[Reason], answer: Mapping[str, np.ndarray], latency_ms: float,
                 image: bytes | None) -> dict[str, np.ndarray]:
    """Build the monitoring inputs (MONITORING_INPUTS, no ``command``) for one answered request.

    Args:
        reasons: why the policy sends it.
        answer: the pipeline's output arrays by name (no batch dim): scores float32 [N],
            classes int64 [N], and for a capture boxes, class_names, masks_rle and
            image_size.
        latency_ms: the request's time in pipeline_bls.
        image: the encoded image, only when the policy captures it; then the answer goes
            along as JSON (predictions), so a stored sample can be replayed and inspected.

    Returns:
        Arrays by input name: reasons object (bytes) [R], scores float32 [N], classes
        int64 [N], latency_ms float32 [1], image and predictions object (bytes) [1] or [0].
    """
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
    """Render the answer as JSON: boxes, scores, classes, class names, RLE masks (text), size."""
    return json.dumps({
        "image_size": [int(v) for v in answer["image_size"]],
        "boxes": np.round(answer["boxes"].astype(float), 3).tolist(),
        "scores": np.round(answer["scores"].astype(float), 5).tolist(),
        "classes": answer["classes"].astype(int).tolist(),
        "class_names": [_text(v) for v in answer["class_names"]],
        "masks_rle": [_text(v) for v in answer["masks_rle"]],
    })


@dataclass(frozen=True)
class Event:
    """Hold one answered request, as pipeline_bls sent it (MONITORING_INPUTS), checked.

    Attributes:
        scores: float32 [N].
        classes: int64 [N], each in [0, number of class names).
        nbytes: its size as received (what it holds in the queue).
        image: the encoded image when captured, else None.
        predictions: the answer as JSON when captured, else None.
    """

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
        """Check the monitoring input arrays and read them into an Event.

        Args:
            arrays: input arrays by name (None for an absent one), as MONITORING_INPUTS.
            class_count: the model's number of class names.
            max_event_bytes: the largest event accepted, bytes.

        Raises:
            InvalidInput: naming the input and the offending value.
        """
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
