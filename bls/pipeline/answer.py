"""Build the answer, one request's output tensors, with its size bounded before it is built.

The outputs are bls/contract/tensors.py PIPELINE_OUTPUTS, built from Instances in
original pixels.

Each detection's mask is pasted once by the strategy ``ops`` (HOST, or a DeviceOps) and
every format is encoded from that one binary mask, so rle, dense, box and polygon decode
to the same pixels, at threshold ties too; polygons are traced and box crops cut on the
host (bls/pipeline/masks.py).
"""

from __future__ import annotations

import json

import numpy as np

from bls.contract.metadata import ModelMetadata
from bls.contract.tensors import PIPELINE_OUTPUTS, MaskFormat
from bls.errors import InvalidInput
from bls.pipeline import masks as mask_ops
from bls.pipeline.host import HOST, HostOps
from bls.pipeline.instances import Instances

_ITEM_BYTES = {spec.name: spec.numpy_dtype.itemsize * int(np.prod(spec.dims[1:]))
               for spec in PIPELINE_OUTPUTS if spec.dtype != "BYTES"}
# Bytes per detection of the outputs whose size is fixed per detection (boxes, scores,
# classes); and a BYTES element's length prefix in Triton's serialisation.
DETECTION_BYTES = sum(_ITEM_BYTES[name] for name in ("boxes", "scores", "classes"))
LENGTH_PREFIX_BYTES = 4
WINDOW_BYTES = _ITEM_BYTES["mask_windows"]


def mask_bytes(instances: Instances, original_size: tuple[int, int],
               mask_format: MaskFormat) -> int:
    """Compute the bytes of the mask outputs whose size grows with the pixels, from the boxes.

    Dense: N x H x W; box: the window areas plus a mask_windows row each. RLE and polygon
    strings are not counted here (a few values per column of each box; polygons are
    bounded as they are traced, build_answer).

    Args:
        instances: detections in original pixels; boxes float32 [N, 4].
        original_size: (height, width) of the original image.
        mask_format: the requested format.
    """
    if instances.masks is None or not len(instances):
        return 0
    if mask_format is MaskFormat.DENSE:
        return len(instances) * original_size[0] * original_size[1]
    if mask_format is MaskFormat.BOX:
        x_lo, y_lo, x_hi, y_hi = mask_ops.window_bounds(instances.boxes, *original_size).T
        return int(((x_hi - x_lo) * (y_hi - y_lo)).sum()) + WINDOW_BYTES * len(instances)
    return 0


def answer_bytes(instances: Instances, original_size: tuple[int, int], meta: ModelMetadata,
                 mask_format: MaskFormat) -> int:
    """Compute the answer's size in bytes before it is built.

    That is the outputs fixed per detection (DETECTION_BYTES), class names as UTF-8 with
    a length prefix each, image_size, plus mask_bytes."""
    names = sum(len(meta.class_name(int(c)).encode()) + LENGTH_PREFIX_BYTES
                for c in instances.classes)
    return (DETECTION_BYTES * len(instances) + names + _ITEM_BYTES["image_size"] * 2
            + mask_bytes(instances, original_size, mask_format))


def _too_large(size: int, what: str, max_answer_bytes: int) -> InvalidInput:
    return InvalidInput(
        "mask_format",
        f"the answer would be {size:,} bytes ({what}), over this server's max_answer_bytes "
        f"of {max_answer_bytes:,}; ask mask_format=rle (the same masks as COCO RLE, a few "
        f"KB each), or fewer detections (max_detections, score_threshold)", "parameter")


def check_answer_size(instances: Instances, original_size: tuple[int, int],
                      meta: ModelMetadata, mask_format: MaskFormat,
                      max_answer_bytes: int | None) -> int:
    """Refuse an answer over ``max_answer_bytes`` before anything of that size is allocated.

    A dense answer is rendered again by the server (as JSON over HTTP, many bytes per
    byte: docs/answers.md, 'The default, and the memory a server needs'), so this bound
    is what keeps one request from taking the server's memory.

    Args:
        instances: detections in original pixels; boxes float32 [N, 4].
        original_size: (height, width) of the original image.
        meta: the model's metadata (class names).
        mask_format: the requested format.
        max_answer_bytes: the bound; None for none.

    Returns:
        The size known before building (answer_bytes).

    Raises:
        InvalidInput: (INVALID_ARG) naming the computed size, the bound and the way out.
    """
    size = answer_bytes(instances, original_size, meta, mask_format)
    if max_answer_bytes is not None and size > max_answer_bytes:
        height, width = original_size
        masks = mask_bytes(instances, original_size, mask_format)
        what = (f"{len(instances)} dense masks of {height}x{width} = {masks:,} bytes"
                if mask_format is MaskFormat.DENSE
                else f"{len(instances)} box-cropped masks, {masks:,} bytes")
        raise _too_large(size, what, max_answer_bytes)
    return size


def build_answer(instances: Instances, original_size: tuple[int, int], meta: ModelMetadata,
                 mask_format: MaskFormat, max_answer_bytes: int | None = None,
                 polygon_tolerance: float = 0.0, ops: HostOps = HOST) -> dict[str, np.ndarray]:
    """Build the answer from Instances in original pixels.

    Args:
        instances: boxes float32 [N, 4], scores float32 [N], classes int64 [N], masks
            float32 [N, M, M] (where ``ops`` keeps them) or None.
        original_size: (height, width) of the original image.
        meta: the model's metadata (class names).
        mask_format: how the masks are carried.
        max_answer_bytes: the bound on the answer; None for none.
        polygon_tolerance: Douglas-Peucker tolerance of polygons, pixels.
        ops: where masks are pasted and encoded (HOST or a DeviceOps).

    Returns:
        Output arrays by name, no batch dim, typed as PIPELINE_OUTPUTS: boxes float32
        [N, 4], scores float32 [N], classes int64 [N], class_names object (bytes) [N],
        image_size int64 [2], masks_rle object (bytes) [N or 0], masks uint8 [N or 0, H,
        W], masks_polygon object (bytes) [N or 0], masks_box uint8 [K], mask_windows
        int64 [N or 0, 4].

    Raises:
        InvalidInput: the answer is over ``max_answer_bytes``: before building it
            (check_answer_size), or for polygons as soon as their text passes it.
    """
    known_bytes = check_answer_size(instances, original_size, meta, mask_format,
                                    max_answer_bytes)
    height, width = original_size
    n = len(instances)
    values = {
        "boxes": instances.boxes.reshape(n, 4),
        "scores": instances.scores,
        "classes": instances.classes,
        "class_names": [meta.class_name(int(c)).encode() for c in instances.classes],
        "image_size": [height, width],
        "masks_rle": [],
        "masks": np.zeros((0, height, width), np.uint8),
        "masks_polygon": [],
        "masks_box": np.zeros(0, np.uint8),
        "mask_windows": np.zeros((0, 4), np.int64),
    }
    masks, boxes = instances.masks, instances.boxes
    if masks is not None and n and mask_format is not MaskFormat.NONE:
        pasted = ops.paste(masks, boxes, height, width)  # once: every format reads it
        if mask_format is MaskFormat.RLE:
            values["masks_rle"] = ops.encode_rle(pasted)
        elif mask_format is MaskFormat.DENSE:
            values["masks"] = ops.dense(pasted)
        elif mask_format is MaskFormat.BOX:
            values["masks_box"], values["mask_windows"] = mask_ops.crops(
                ops.windows(pasted, boxes))
        elif mask_format is MaskFormat.POLYGON:
            values["masks_polygon"] = _polygon_texts(
                ops.windows(pasted, boxes), n, polygon_tolerance, known_bytes,
                max_answer_bytes)
    return {spec.name: _as_array(values[spec.name], spec.numpy_dtype) for spec in PIPELINE_OUTPUTS}


def _polygon_texts(windows, n: int, tolerance: float, fixed_bytes: int,
                   max_answer_bytes: int | None) -> list[bytes]:
    """Each of the n masks' polygons as JSON, traced one window at a time, refused as
    soon as the answer passes ``max_answer_bytes``."""
    texts, total = [], fixed_bytes
    for window in windows:
        text = json.dumps(mask_ops.polygons(window, tolerance), separators=(",", ":")).encode()
        total += len(text) + LENGTH_PREFIX_BYTES
        if max_answer_bytes is not None and total > max_answer_bytes:
            raise _too_large(total, f"polygons of the first {len(texts) + 1} of {n} "
                                    f"masks alone", max_answer_bytes)
        texts.append(text)
    return texts


def _as_array(value, dtype: np.dtype) -> np.ndarray:
    if dtype == np.object_:
        out = np.empty(len(value), dtype=np.object_)
        out[:] = value
        return out
    return np.ascontiguousarray(value, dtype=dtype)


def empty_answer(meta: ModelMetadata) -> dict[str, np.ndarray]:
    """The answer without detections, of a 0 x 0 image: what a health probe is answered."""
    nothing = Instances(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                        np.zeros(0, np.int64), None)
    return build_answer(nothing, (0, 0), meta, MaskFormat.NONE)
