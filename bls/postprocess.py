"""From the model's outputs (model-input pixels) to the pipeline's answer (original pixels).

``rescale`` is detectron2's ``detector_postprocess``: scale boxes to the original size,
clip them to it, drop empty ones. ``select`` applies the request's score threshold and
detection cap. ``answer`` pastes and encodes masks into the pipeline's output tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from bls import masks as mask_ops
from bls.contract import PIPELINE_OUTPUTS, MaskFormat, model_output
from bls.errors import InvalidInput
from bls.metadata import ModelMetadata


@dataclass(frozen=True)
class Detections:
    """boxes float32 [N, 4] (x1, y1, x2, y2), scores float32 [N], classes int64 [N],
    masks float32 [N, M, M] mask-head probabilities (numpy, or a torch tensor on the
    pipeline's device, bls/device.py) or None for a model without masks."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, keep: np.ndarray) -> "Detections":
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep],
                          None if self.masks is None else self.masks[keep])


def from_model_outputs(outputs: Mapping[str, np.ndarray], meta: ModelMetadata
                       ) -> tuple[Detections, tuple[int, int]]:
    """Model output tensors by contract name -> (Detections, model-input (height, width))."""
    specs = meta.outputs

    def get(field: str) -> np.ndarray:
        spec = model_output(specs, field)
        value = np.asarray(outputs[spec.name])
        return value.astype(spec.numpy_dtype, copy=False)

    boxes = get("boxes").reshape(-1, 4)
    scores = get("scores").reshape(-1)
    classes = get("classes").reshape(-1)
    masks = None
    if meta.has_masks:
        m = meta.mask_resolution
        raw = outputs[model_output(specs, "masks").name]
        # A torch tensor stays where it is (bls/device.py pastes it on its device).
        masks = raw.reshape(-1, m, m) if _on_device(raw) else get("masks").reshape(-1, m, m)
    n = len(scores)
    if not (len(boxes) == len(classes) == n and (masks is None or len(masks) == n)):
        raise ValueError(f"model outputs disagree on the detection count: boxes {len(boxes)}, "
                         f"classes {len(classes)}, scores {n}, "
                         f"masks {None if masks is None else len(masks)}")
    height, width = (int(v) for v in get("image_size").reshape(2))
    return Detections(boxes, scores, classes, masks), (height, width)


def select(det: Detections, score_threshold: float, max_detections: int | None) -> Detections:
    """Keep scores >= score_threshold, then the max_detections highest (stable order)."""
    keep = np.flatnonzero(det.scores >= score_threshold)
    keep = keep[np.argsort(-det.scores[keep], kind="stable")]
    if max_detections is not None:
        keep = keep[:max_detections]
    return det.take(keep)


def rescale(det: Detections, input_size: tuple[int, int], output_size: tuple[int, int]
            ) -> Detections:
    """detectron2's detector_postprocess for boxes: scale (in float32, as torch does),
    clip to the output image, drop boxes with zero width or height."""
    in_h, in_w = input_size
    out_h, out_w = output_size
    boxes = det.boxes.astype(np.float32, copy=True)
    boxes[:, 0::2] *= np.float32(out_w / in_w)
    boxes[:, 1::2] *= np.float32(out_h / in_h)
    np.clip(boxes[:, 0::2], 0, out_w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, out_h, out=boxes[:, 1::2])
    rescaled = Detections(boxes, det.scores, det.classes, det.masks)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return rescaled if nonempty.all() else rescaled.take(nonempty)


def mask_bytes(det: Detections, original_size: tuple[int, int], mask_format: MaskFormat) -> int:
    """Bytes of the mask outputs whose size grows with the pixels, known from the boxes
    alone: dense N x H x W; box the window areas plus 32 per window. RLE and polygon
    strings are not counted here: a few values per column of each box (polygons are
    bounded as they are built, answer)."""
    if det.masks is None or not len(det):
        return 0
    if mask_format is MaskFormat.DENSE:
        return len(det) * original_size[0] * original_size[1]
    if mask_format is MaskFormat.BOX:
        x_lo, y_lo, x_hi, y_hi = mask_ops.window_bounds(det.boxes, *original_size).T
        return int(((x_hi - x_lo) * (y_hi - y_lo)).sum()) + 32 * len(det)
    return 0


def answer_bytes(det: Detections, original_size: tuple[int, int], meta: ModelMetadata,
                 mask_format: MaskFormat) -> int:
    """The answer's size before it is built: the fixed-size outputs (boxes 16, scores 4,
    classes 8 bytes per detection, class names as UTF-8 with a 4-byte length each,
    image_size 16) plus mask_bytes."""
    names = sum(len(meta.class_name(int(c)).encode()) + 4 for c in det.classes)
    return 28 * len(det) + names + 16 + mask_bytes(det, original_size, mask_format)


def _too_large(size: int, what: str, max_answer_bytes: int) -> InvalidInput:
    return InvalidInput(
        "mask_format",
        f"the answer would be {size:,} bytes ({what}), over this server's max_answer_bytes "
        f"of {max_answer_bytes:,}; ask mask_format=rle (the same masks as COCO RLE, a few "
        f"KB each), or fewer detections (max_detections, score_threshold)", "parameter")


def check_answer_size(det: Detections, original_size: tuple[int, int], meta: ModelMetadata,
                      mask_format: MaskFormat, max_answer_bytes: int | None) -> None:
    """Raise InvalidInput (INVALID_ARG) naming the computed size, the bound and the way
    out, before anything of that size is allocated. A dense answer is rendered again by
    the server (as JSON over HTTP, at tens of bytes per byte), so this bound is what
    keeps one request from taking the server's memory."""
    if max_answer_bytes is None:
        return
    size = answer_bytes(det, original_size, meta, mask_format)
    if size > max_answer_bytes:
        height, width = original_size
        masks = mask_bytes(det, original_size, mask_format)
        what = (f"{len(det)} dense masks of {height}x{width} = {masks:,} bytes"
                if mask_format is MaskFormat.DENSE
                else f"{len(det)} box-cropped masks, {masks:,} bytes")
        raise _too_large(size, what, max_answer_bytes)


def answer(det: Detections, original_size: tuple[int, int], meta: ModelMetadata,
           mask_format: MaskFormat, max_answer_bytes: int | None = None,
           polygon_tolerance: float = 0.0) -> dict[str, np.ndarray]:
    """Detections in original pixels -> the pipeline's output tensors (no batch dim),
    named and typed as contract.PIPELINE_OUTPUTS. Refuses an answer over
    ``max_answer_bytes``: before building it (check_answer_size), or for polygons as
    soon as their text passes the bound."""
    check_answer_size(det, original_size, meta, mask_format, max_answer_bytes)
    height, width = original_size
    n = len(det)
    rle: list[bytes] = []
    polygons: list[bytes] = []
    dense = np.zeros((0, height, width), np.uint8)
    box_data, box_windows = np.zeros(0, np.uint8), np.zeros((0, 4), np.int64)
    masks = det.masks
    if masks is not None and n and _on_device(masks) and \
            mask_format in (MaskFormat.RLE, MaskFormat.DENSE):
        from bls import device as device_ops  # torch: only for the device path

        pasted = device_ops.paste(masks, det.boxes, height, width)
        if mask_format is MaskFormat.RLE:
            rle = device_ops.encode_rle(pasted)
        else:
            dense = device_ops.dense(pasted)
    elif masks is not None and n and mask_format is not MaskFormat.NONE:
        if _on_device(masks):  # polygons and crops are traced on the host
            masks = masks.cpu().numpy()
        if mask_format is MaskFormat.RLE:
            rle = mask_ops.encode_rle(masks, det.boxes, height, width)
        elif mask_format is MaskFormat.DENSE:
            windows = mask_ops.paste_windows(masks, det.boxes, height, width)
            dense = mask_ops.dense_masks(windows, height, width)
        elif mask_format is MaskFormat.BOX:
            box_data, box_windows = mask_ops.crops(
                mask_ops.iter_windows(masks, det.boxes, height, width))
        else:
            polygons = _polygon_texts(masks, det.boxes, original_size, polygon_tolerance,
                                      answer_bytes(det, original_size, meta, mask_format),
                                      max_answer_bytes)
    values = {
        "boxes": det.boxes.reshape(n, 4),
        "scores": det.scores,
        "classes": det.classes,
        "class_names": [meta.class_name(int(c)).encode() for c in det.classes],
        "masks_rle": rle,
        "masks": dense,
        "image_size": [height, width],
        "masks_polygon": polygons,
        "masks_box": box_data,
        "mask_windows": box_windows,
    }
    return {spec.name: _as_array(values[spec.name], spec.numpy_dtype) for spec in PIPELINE_OUTPUTS}


def _polygon_texts(masks: np.ndarray, boxes: np.ndarray, original_size: tuple[int, int],
                   tolerance: float, fixed_bytes: int, max_answer_bytes: int | None
                   ) -> list[bytes]:
    """Each mask's polygons as JSON, traced one window at a time, refused as soon as the
    answer passes ``max_answer_bytes``."""
    texts, total = [], fixed_bytes
    for window in mask_ops.iter_windows(masks, boxes, *original_size):
        text = json.dumps(mask_ops.polygons(window, tolerance), separators=(",", ":")).encode()
        total += len(text) + 4
        if max_answer_bytes is not None and total > max_answer_bytes:
            raise _too_large(total, f"polygons of the first {len(texts) + 1} of {len(boxes)} "
                                    f"masks alone", max_answer_bytes)
        texts.append(text)
    return texts


def _on_device(value) -> bool:
    """A torch tensor (the device path), told apart without importing torch."""
    return type(value).__module__.startswith("torch")


def _as_array(value, dtype: np.dtype) -> np.ndarray:
    if dtype == np.object_:
        out = np.empty(len(value), dtype=np.object_)
        out[:] = value
        return out
    return np.ascontiguousarray(value, dtype=dtype)
