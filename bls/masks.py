"""Paste mask-head probabilities into the image, only inside each box, and encode them.

Semantics are detectron2's ``paste_masks_in_image`` (layers/mask_ops.py) as run on CPU:
each [M, M] mask is sampled with ``grid_sample`` (bilinear, zero padding,
align_corners=False) at the centres of the pixels of its box widened by one pixel,
then thresholded at ``>= 0.5``. Pixels outside that window are 0.

Dense masks: bilinear sampling is separable, so a window is ``Wy @ mask @ Wx.T`` with
small [h, M] and [w, M] weight matrices: two BLAS calls per mask instead of an H x W grid
per mask. RLE: computed from each column's M + 2 interpolation knots, without producing
pixels at all (encode_rle), so its cost follows the boxes' widths, not their areas.
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


def _column_profiles(masks: np.ndarray, boxes: np.ndarray, width: int):
    """Every image column of every mask's window, with the mask interpolated to it.

    -> (owner int64 [C], x int64 [C], profiles float32 [C, M]): for column c, the mask
    it belongs to, its image x, and the mask's values at the M cell rows after bilinear
    sampling along x with zero padding (grid_sample's sampling, in its float32 steps).
    """
    n, m = masks.shape[:2]
    x1, x2 = boxes[:, 0], boxes[:, 2]
    x_lo = np.maximum(np.floor(x1).astype(np.int64) - 1, 0)
    x_hi = np.minimum(np.ceil(x2).astype(np.int64) + 1, width)
    counts = np.maximum(x_hi - x_lo, 0)
    owner = np.repeat(np.arange(n), counts)
    x = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts - x_lo, counts)
    grid = (x.astype(np.float32) + np.float32(0.5) - x1[owner]) / (x2[owner] - x1[owner]) \
        * np.float32(2) - np.float32(1)
    src = ((grid + np.float32(1)) * np.float32(m) - np.float32(1)) / np.float32(2)
    left = np.floor(src)
    frac = (src - left)[:, None]
    # Mask columns as rows of one table, a zero row before and after each mask's:
    # out-of-range neighbours (zero padding) land on a zero row. Row gathers are memcpys.
    table = np.zeros((n, m + 2, m), np.float32)
    table[:, 1:m + 1] = masks.transpose(0, 2, 1)
    table = table.reshape(n * (m + 2), m)
    base = owner * (m + 2)
    left = left.astype(np.int64)
    lo = table.take(base + np.clip(left + 1, 0, m + 1), axis=0)
    profiles = table.take(base + np.clip(left + 2, 0, m + 1), axis=0)
    profiles -= lo  # lo + frac * (hi - lo), in place
    profiles *= frac
    profiles += lo
    return owner, x, profiles


def encode_rle(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
               threshold: float = MASK_THRESHOLD) -> list[bytes]:
    """COCO compressed RLE counts of the masks paste_windows would paste (what
    ``pycocotools.mask.encode`` gives for them), without producing any of their pixels.

    masks float [N, M, M], boxes float32 [N, 4] as for paste_windows. Along a column the
    bilinear value is linear between the M cell rows (zero one cell beyond), so the
    rows at or above the threshold are found from the M + 2 knots of each column: where
    a segment crosses the threshold, the first (or last) pixel centre past the crossing
    starts (or ends) a run. Work is O(M) per column instead of O(pixels); a pixel whose
    value ties the threshold to float precision may fall either side.
    """
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or len(masks) != len(boxes):
        raise ValueError(f"expected masks [N, M, M] and boxes [N, 4], got "
                         f"{masks.shape} and {boxes.shape}")
    n, m = masks.shape[:2]
    if n == 0:
        return []
    boxes = boxes.astype(np.float32, copy=False)
    owner, x, profiles = _column_profiles(masks.astype(np.float32, copy=False), boxes, width)
    # Knots -1..M of each column; the two outer ones are 0, below any threshold > 0, so
    # every column starts and ends below it and rises and falls alternate.
    above = np.zeros((len(owner), m + 2), bool)
    np.greater_equal(profiles, threshold, out=above[:, 1:m + 1])
    # Crossings in column-major image order: by column, then down the column.
    flat = np.flatnonzero(above[:, 1:] != above[:, :-1])
    col, knot = np.divmod(flat, m + 1)  # the segment from knot (knot - 1) to knot

    def value(k):  # profile value at knot k (-1..M), 0 at the outer knots
        inside = (k >= 0) & (k < m)
        return np.where(inside, profiles[col, np.clip(k, 0, m - 1)], 0).astype(np.float64)

    a, b = value(knot - 1), value(knot)
    u = knot - 1 + (threshold - a) / (b - a)  # crossing, in mask-cell coordinates
    who = owner[col]
    y1, y2 = boxes[who, 1].astype(np.float64), boxes[who, 3].astype(np.float64)
    y = (u + 0.5) * (y2 - y1) / m + y1 - 0.5  # ... in image rows (pixel centres at ints)
    row = np.where(b > a, np.ceil(y), np.floor(y) + 1)  # run start / exclusive end
    # detectron2 pastes inside the box widened by a pixel; nothing outside it is set.
    row = np.clip(row, np.maximum(np.floor(y1) - 1, 0), np.minimum(np.ceil(y2) + 1, height))
    return encode_runs(x[col] * height + row.astype(np.int64), who, n, height, width)


def encode_runs(position: np.ndarray, owner: np.ndarray, n: int, height: int, width: int
                ) -> list[bytes]:
    """Run boundaries (as for run_counts) -> COCO compressed RLE counts of n masks of
    height x width. Shared by encode_rle and the device path (bls/device.py)."""
    uncompressed = [{"size": [height, width], "counts": c}
                    for c in run_counts(position, owner, n, height * width)]
    return [r["counts"] for r in mask_utils.frPyObjects(uncompressed, height, width)]


def run_counts(position: np.ndarray, owner: np.ndarray, n: int, total: int) -> list[np.ndarray]:
    """Run boundaries -> uncompressed COCO RLE counts of each of n masks.

    position int64 [2R]: flat column-major [start0, end0, start1, end1, ...] of R runs,
    ascending within each mask; owner int64 [2R]: their mask, ascending. Counts start
    with a run of zeros (possibly 0) and alternate; a mask without runs is [total].
    """
    starts, ends, mask = position[0::2], position[1::2], owner[0::2]
    keep = ends > starts  # a crossing between two pixel centres sets no pixel
    starts, ends, mask = starts[keep], ends[keep], mask[keep]
    # A run ending at the bottom of a column and the same mask's run starting at the top
    # of the next are one run.
    joined = (ends[:-1] == starts[1:]) & (mask[:-1] == mask[1:])
    if joined.any():
        starts, mask = starts[~np.r_[False, joined]], mask[~np.r_[False, joined]]
        ends = ends[~np.r_[joined, False]]
    bounds = np.stack([starts, ends], 1).reshape(-1)
    steps = np.diff(bounds, prepend=0)
    first = np.searchsorted(mask, np.arange(n + 1)) * 2  # each mask's slice of steps
    has_runs = first[1:] > first[:-1]
    steps[first[:-1][has_runs]] = starts[first[:-1][has_runs] // 2]  # zeros from pixel 0
    tails = np.full(n, total)
    tails[has_runs] = total - bounds[first[1:][has_runs] - 1]
    return [np.append(steps[first[i]:first[i + 1]], tails[i]) if tails[i]
            else steps[first[i]:first[i + 1]] for i in range(n)]
