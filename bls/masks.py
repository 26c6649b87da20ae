"""Paste mask-head probabilities into the image, only inside each box, and encode them.

Semantics are detectron2's ``paste_masks_in_image`` (layers/mask_ops.py) as run on CPU:
each [M, M] mask is sampled with ``grid_sample`` (bilinear, zero padding,
align_corners=False) at the centres of the pixels of its box widened by one pixel,
then thresholded at ``>= 0.5``. Pixels outside that window are 0.

Bilinear sampling is separable, so the window is ``Wy @ mask @ Wx.T`` with small
[h, M] and [w, M] weight matrices: two BLAS calls per mask instead of an H x W grid
per mask. RLE is computed from the window alone, never from a full-image mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class MaskWindow:
    """A pasted mask: ``mask`` (bool [h, w]) placed at rows y0.., columns x0.. of the image."""

    y0: int
    x0: int
    mask: np.ndarray


def _sample_weights(start: int, stop: int, lo: np.float32, hi: np.float32, m: int) -> np.ndarray:
    """Bilinear weights [stop - start, m] of pixel centres start+0.5.. over m cells that
    span [lo, hi], zero outside (grid_sample's padding_mode='zeros')."""
    centres = np.arange(start, stop, dtype=np.float32) + np.float32(0.5)
    # The same float32 steps as detectron2 (normalise to [-1, 1]) and grid_sample
    # (unnormalise with align_corners=False), so thresholds fall on the same pixels.
    grid = (centres - lo) / (hi - lo) * np.float32(2) - np.float32(1)
    src = ((grid + np.float32(1)) * np.float32(m) - np.float32(1)) / np.float32(2)
    left = np.floor(src)
    frac = src - left
    left = left.astype(np.int64)
    rows = np.arange(centres.size)
    # Two padding columns (index -1 and m) absorb neighbours outside the mask.
    weights = np.zeros((centres.size, m + 2), np.float32)
    weights[rows, np.clip(left + 1, 0, m + 1)] = np.float32(1) - frac
    right = np.clip(left + 2, 0, m + 1)
    weights[rows, right] += np.where(right == left + 2, frac, np.float32(0))
    return weights[:, 1:m + 1]


def paste_windows(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
                  threshold: float = MASK_THRESHOLD) -> list[MaskWindow]:
    """masks float [N, M, M] (probabilities), boxes float32 [N, 4] (x1, y1, x2, y2, image
    pixels, non-empty) -> one MaskWindow per mask, inside an image of height x width."""
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or len(masks) != len(boxes):
        raise ValueError(f"expected masks [N, M, M] and boxes [N, 4], got "
                         f"{masks.shape} and {boxes.shape}")
    m = masks.shape[1]
    boxes = boxes.astype(np.float32, copy=False)
    masks = masks.astype(np.float32, copy=False)
    windows = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        # detectron2's window: the box widened by a pixel, clipped to the image.
        x_lo, y_lo = max(int(np.floor(x1)) - 1, 0), max(int(np.floor(y1)) - 1, 0)
        x_hi, y_hi = min(int(np.ceil(x2)) + 1, width), min(int(np.ceil(y2)) + 1, height)
        if x_hi <= x_lo or y_hi <= y_lo:
            windows.append(MaskWindow(0, 0, np.zeros((0, 0), bool)))
            continue
        wy = _sample_weights(y_lo, y_hi, y1, y2, m)
        wx = _sample_weights(x_lo, x_hi, x1, x2, m)
        probs = (wy @ mask) @ wx.T
        windows.append(MaskWindow(y_lo, x_lo, probs >= threshold))
    return windows


def dense_masks(windows: list[MaskWindow], height: int, width: int) -> np.ndarray:
    """uint8 [N, height, width], 1 inside each mask."""
    out = np.zeros((len(windows), height, width), np.uint8)
    for i, w in enumerate(windows):
        h, wd = w.mask.shape
        out[i, w.y0:w.y0 + h, w.x0:w.x0 + wd] = w.mask
    return out


def rle_counts(window: MaskWindow, height: int, width: int) -> np.ndarray:
    """Uncompressed COCO RLE counts of the full height x width mask (column-major runs,
    starting with a run of zeros), computed from the window alone."""
    h, w = window.mask.shape
    total = height * width
    if h == 0 or w == 0:
        return np.array([total], np.int64)
    # Column-major order: one row per image column, a zero on each side of the window.
    cols = np.zeros((w, h + 2), np.int8)
    cols[:, 1:-1] = window.mask.T
    col, row = np.nonzero(np.diff(cols, axis=1))  # starts (+1) and ends (-1), in order
    pos = (window.x0 + col).astype(np.int64) * height + window.y0 + row
    # A run that ends at the bottom of one column and restarts at the top of the next
    # (window spanning the full height) is one run: drop the end/start pair.
    joined = pos[1:] == pos[:-1]
    if joined.any():
        pos = pos[~(np.r_[joined, False] | np.r_[False, joined])]
    counts = np.diff(np.concatenate(([0], pos, [total])))
    return counts[:-1] if len(counts) > 1 and counts[-1] == 0 else counts


def encode_rle(windows: list[MaskWindow], height: int, width: int) -> list[bytes]:
    """COCO compressed RLE counts (what ``pycocotools.mask.encode`` gives for the dense
    mask), one per window; decode with {"size": [height, width], "counts": c}."""
    if not windows:
        return []
    uncompressed = [{"size": [height, width], "counts": rle_counts(w, height, width)}
                    for w in windows]
    return [r["counts"] for r in mask_utils.frPyObjects(uncompressed, height, width)]
