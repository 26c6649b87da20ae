"""Make what a client needs of pipeline answers: parsed detections, decoded masks, COCO
results, latency summaries. Pure functions, no server.

Output names, dtypes and order come from bls/contract/tensors.py: the fields of ``Detections``
are the names of ``PIPELINE_OUTPUTS`` (a test checks it), so a renamed output fails
here loudly rather than reading as an empty answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from bls.contract.tensors import PIPELINE_OUTPUTS, TensorSpec


class AnswerError(ValueError):
    """An answer that does not follow the contract (missing output, wrong shape)."""


@dataclass(frozen=True)
class Detections:
    """Hold one image's answer, without batch dimension.

    Attributes:
        boxes: float32 [N, 4] x1, y1, x2, y2 in original-image pixels.
        scores: float32 [N], descending.
        classes: int64 [N], index into the model's class names.
        class_names: tuple of N str.
        masks_rle: tuple of N bytes (COCO compressed RLE counts, size = image_size) when
            the request asked for mask_format=rle (the default), else empty.
        masks: uint8 [N, H, W] 0/1 when mask_format=dense, else [0, H, W].
        image_size: (height, width) of the original image.
        masks_polygon: tuple of N bytes (JSON lists of COCO polygons) for
            mask_format=polygon, else empty.
        masks_box: uint8 [sum of crop areas], the crops one after the other, row-major,
            for mask_format=box.
        mask_windows: int64 [N, 4] x0, y0, width, height of each crop, for
            mask_format=box, else [0, 4].
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...]
    masks_rle: tuple[bytes, ...]
    masks: np.ndarray
    image_size: tuple[int, int]
    masks_polygon: tuple[bytes, ...]
    masks_box: np.ndarray
    mask_windows: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def has_masks(self) -> bool:
        """Whether the answer carries one mask per detection (in any format).

        False for mask_format=none or a model without masks (unless there is nothing to
        mask).
        """
        n = len(self)
        return n in (len(self.masks_rle), len(self.masks), len(self.masks_polygon),
                     len(self.mask_windows))

    @classmethod
    def from_arrays(cls, outputs: Mapping[str, np.ndarray | None], batched: bool = False
                    ) -> "Detections":
        """Read output arrays by contract name into Detections.

        Args:
            outputs: PIPELINE_OUTPUTS by name, typed as the contract says (class_names,
                masks_rle, masks_polygon object (bytes) [N]).
            batched: the arrays carry a leading batch dimension of 1 (a model with
                max_batch_size > 0), stripped here.

        Raises:
            AnswerError: an output is missing, has no batch dimension of 1 when
                ``batched``, or the outputs disagree on the detection count.
        """
        values = {}
        for spec in PIPELINE_OUTPUTS:
            value = outputs.get(spec.name)
            if value is None:
                raise AnswerError(f"the answer has no output '{spec.name}'")
            value = np.asarray(value)
            if batched:
                if value.ndim == 0 or value.shape[0] != 1:
                    raise AnswerError(f"output '{spec.name}' has shape {list(value.shape)}; "
                                      "expected a batch dimension of 1")
                value = value[0]
            values[spec.name] = _convert(spec, value)
        det = cls(**values)
        # class names are text; RLE counts stay bytes, as pycocotools takes them
        det = replace(det, class_names=tuple(n.decode() for n in det.class_names))
        n = len(det)
        if det.boxes.shape != (n, 4) or len(det.classes) != n or len(det.class_names) != n:
            raise AnswerError(f"outputs disagree on the detection count: boxes {list(det.boxes.shape)}, "
                              f"scores {n}, classes {len(det.classes)}, "
                              f"class_names {len(det.class_names)}")
        return det

    @classmethod
    def from_result(cls, result, batched: bool) -> "Detections":
        """Read a tritonclient InferResult (http or grpc, sync or aio) into Detections."""
        return cls.from_arrays({spec.name: result.as_numpy(spec.name)
                                for spec in PIPELINE_OUTPUTS}, batched)


def _convert(spec: TensorSpec, value: np.ndarray):
    """One output array (no batch dim) -> the Detections field's type."""
    if spec.dtype == "BYTES":
        return tuple(v.encode() if isinstance(v, str) else bytes(v) for v in value.reshape(-1))
    value = value.astype(spec.numpy_dtype, copy=False)
    if spec.dims == (2,):  # image_size: a pair of ints is easier to pass around
        return tuple(int(v) for v in value.reshape(2))
    return value


def decode_masks(det: Detections) -> np.ndarray:
    """Decode the masks from whichever format the answer carries.

    Dense as it is, RLE and polygons decoded by pycocotools, box crops placed in their
    windows.

    Returns:
        uint8 [N, H, W] 0/1.

    Raises:
        ValueError: the answer holds no masks (mask_format=none).
        AnswerError: the box crops do not fill their windows exactly.
    """
    height, width = det.image_size
    n = len(det)
    if n == 0:
        return np.zeros((0, height, width), np.uint8)
    if len(det.masks) == n:
        return np.ascontiguousarray(det.masks, np.uint8)
    if len(det.masks_rle) == n:
        rles = [{"size": [height, width], "counts": c} for c in det.masks_rle]
        # pycocotools decodes to [H, W, N] in Fortran order
        return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))
    if len(det.masks_polygon) == n:
        out = np.zeros((n, height, width), np.uint8)
        for i, text in enumerate(det.masks_polygon):
            outlines = json.loads(text)
            if outlines:
                rle = mask_utils.merge(mask_utils.frPyObjects(outlines, height, width))
                out[i] = mask_utils.decode(rle)
        return out
    if len(det.mask_windows) == n:
        out = np.zeros((n, height, width), np.uint8)
        offset = 0
        for i, (x0, y0, w, h) in enumerate(det.mask_windows.tolist()):
            out[i, y0:y0 + h, x0:x0 + w] = det.masks_box[offset:offset + h * w].reshape(h, w)
            offset += h * w
        if offset != len(det.masks_box):
            raise AnswerError(f"masks_box holds {len(det.masks_box)} values, its windows "
                              f"{offset}")
        return out
    raise ValueError("the answer holds no masks (requested with mask_format=none, or the "
                     "model has no mask head)")


def rle_strings(det: Detections) -> list[str]:
    """Give each detection's COCO compressed RLE counts as str (JSON-ready).

    Masks in another format are decoded and encoded.
    """
    if len(det.masks_rle) == len(det):
        return [c.decode("ascii") for c in det.masks_rle]
    masks = decode_masks(det)
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [r["counts"].decode("ascii") for r in encoded]


def coco_results(det: Detections, image_id: int, category_ids: Sequence[int]) -> list[dict]:
    """Turn Detections into COCO results entries (what COCOeval's loadRes takes).

    Each entry: image_id, category_id (category_ids[class]), bbox [x, y, w, h], score,
    and segmentation {size: [h, w], counts: str} when the answer holds masks.

    Raises:
        ValueError: a class index has no category id.
    """
    classes = det.classes.tolist()
    bad = [c for c in classes if not 0 <= c < len(category_ids)]
    if bad:
        raise ValueError(f"class index {bad[0]} has no category id "
                         f"({len(category_ids)} categories)")
    rles = rle_strings(det) if det.has_masks else None
    out = []
    for i, (box, score, cls) in enumerate(zip(det.boxes.tolist(), det.scores.tolist(), classes)):
        x1, y1, x2, y2 = box
        entry = {"image_id": int(image_id), "category_id": int(category_ids[cls]),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
        if rles is not None:
            entry["segmentation"] = {"size": list(det.image_size), "counts": rles[i]}
        out.append(entry)
    return out


def differences(a: Detections, b: Detections, box_atol: float = 0.0,
                score_atol: float = 0.0) -> list[str]:
    """Say how two answers for the same image differ (empty: they agree).

    Compared: detection count, image size, classes, boxes and scores beyond the
    tolerances, masks (in any format).
    """
    if a.image_size != b.image_size:
        return [f"image_size {a.image_size} != {b.image_size}"]
    if len(a) != len(b):
        return [f"{len(a)} detections != {len(b)}"]
    found = []
    if not np.array_equal(a.classes, b.classes):
        found.append(f"classes {a.classes.tolist()} != {b.classes.tolist()}")
    for name, x, y, tol in (("boxes", a.boxes, b.boxes, box_atol),
                            ("scores", a.scores, b.scores, score_atol)):
        gap = float(np.abs(x - y).max(initial=0.0))
        if gap > tol:
            found.append(f"{name} differ by up to {gap:.3g} (tolerance {tol:g})")
    if (a.masks_rle != b.masks_rle or not np.array_equal(a.masks, b.masks)
            or a.masks_polygon != b.masks_polygon or not np.array_equal(a.masks_box, b.masks_box)
            or not np.array_equal(a.mask_windows, b.mask_windows)):
        found.append("masks differ")
    return found


def top_labels(det: Detections, k: int = 3) -> str:
    """Render the k highest scores as 'person 0.91, dog 0.80' (scores arrive sorted)."""
    return ", ".join(f"{name} {score:.2f}"
                     for name, score in zip(det.class_names[:k], det.scores[:k].tolist()))


# --------------------------------------------------------------------------- latency
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class LatencySummary:
    """Hold request latencies in milliseconds; NaN when there were none.

    Attributes:
        count: the number of requests.
        mean_ms, p50_ms, p90_ms, p99_ms: mean and percentiles.
    """

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    def line(self) -> str:
        """Render the percentiles and count as one line."""
        return (f"latency p50 {self.p50_ms:.1f} ms, p90 {self.p90_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms (n={self.count})")


def latency_summary(latencies_s: Sequence[float]) -> LatencySummary:
    """Summarise seconds per request as a LatencySummary (linear-interpolated percentiles)."""
    values = np.asarray(latencies_s, np.float64) * 1000.0
    if values.size == 0:
        nan = float("nan")
        return LatencySummary(0, nan, nan, nan, nan)
    p50, p90, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
    return LatencySummary(int(values.size), float(values.mean()), p50, p90, p99)


def throughput(count: int, wall_s: float) -> float:
    """Compute items per second over a wall time; 0 for an empty or instant run."""
    return count / wall_s if wall_s > 0 else 0.0

