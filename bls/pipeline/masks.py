"""Paste mask-head probabilities into the image, once, and encode that one binary mask.

As COCO RLE (encode_rle), dense masks (dense_masks), box crops (crops of windows) or COCO
polygons (polygons of windows): every format is read from the same ``ColumnRuns``, so
they decode to the same pixels, at threshold ties too.

Semantics are detectron2's ``paste_masks_in_image`` (layers/mask_ops.py) as run on CPU:
each [M, M] mask is sampled with ``grid_sample`` (bilinear, zero padding,
align_corners=False) at the centres of the pixels of its box widened by one pixel,
then thresholded at ``>= 0.5``. Pixels outside that window are 0.

How (paste): bilinear sampling is separable and linear between knots, so each image column
of a mask's window is first interpolated along x to the M cell rows (M + 2 knots with the
zero padding), then the rows at or above the threshold are found from those knots: where
a segment crosses the threshold, the first (or last) pixel centre past the crossing starts
(or ends) a run. Work is O(M) per column instead of O(pixels); the runs are the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class MaskWindow:
    """Hold a pasted mask: ``mask`` (bool [h, w]) at rows y0.., columns x0.. of the image."""

    y0: int
    x0: int
    mask: np.ndarray


def window_bounds(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Compute each box's paste window: detectron2's, the box widened by a pixel, clipped.

    Nothing of a mask is set outside it.

    Args:
        boxes: float32 [N, 4] x1, y1, x2, y2 in image pixels.
        height, width: the image's size.

    Returns:
        int64 [N, 4] x_lo, y_lo, x_hi, y_hi (exclusive).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    lo = np.maximum(np.floor(boxes[:, :2]).astype(np.int64) - 1, 0)
    hi = np.minimum(np.ceil(boxes[:, 2:]).astype(np.int64) + 1, [width, height])
    return np.concatenate([lo, np.maximum(hi, lo)], 1)


@dataclass(frozen=True)
class ColumnRuns:
    """Hold N pasted binary masks of height x width as their runs down each image column.

    Run r of mask ``owner[r]`` sets rows ``start[r]`` to ``stop[r] - 1`` of column ``x[r]``.
    Runs are ordered by mask, then column, then row, and never overlap; two may touch
    (a run's stop is the next one's start), which encoders join and renderers fill.

    Attributes:
        owner, x, start, stop: int64 [R].
        count: N, the number of masks (a mask may have no runs).
        height, width: the image's size.
    """

    owner: np.ndarray
    x: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    count: int
    height: int
    width: int


def windows(pasted: ColumnRuns, boxes: np.ndarray):
    """Yield each pasted mask as a MaskWindow over its paste window (window_bounds), one
    window's pixels at a time: what box crops and polygons are made of.

    Args:
        pasted: the masks, from paste.
        boxes: float32 [N, 4] x1, y1, x2, y2, the boxes they were pasted with.
    """
    bounds = window_bounds(boxes, pasted.height, pasted.width).tolist()
    first = np.searchsorted(pasted.owner, np.arange(pasted.count + 1))
    for i, (x_lo, y_lo, x_hi, y_hi) in enumerate(bounds):
        if x_hi <= x_lo or y_hi <= y_lo:
            yield MaskWindow(0, 0, np.zeros((0, 0), bool))
            continue
        runs = slice(first[i], first[i + 1])
        yield MaskWindow(y_lo, x_lo, np.ascontiguousarray(_fill(
            pasted.x[runs] - x_lo, pasted.start[runs] - y_lo, pasted.stop[runs] - y_lo,
            x_hi - x_lo, y_hi - y_lo).T))


def _fill(column: np.ndarray, start: np.ndarray, stop: np.ndarray, columns: int, rows: int
          ) -> np.ndarray:
    """Render runs into bool [columns, rows] (column-major): +1 at each start, -1 at each
    stop, summed down the column. (Starts are distinct, and so are stops.)"""
    edges = np.zeros((columns, rows + 1), np.int8)
    edges[column, start] += 1
    edges[column, stop] -= 1
    return np.cumsum(edges[:, :rows], axis=1, dtype=np.int8) > 0


def crops(windows) -> tuple[np.ndarray, np.ndarray]:
    """Crop each mask to its window, for mask_format=box; lossless.

    A mask has no pixel outside its window.

    Args:
        windows: MaskWindows (an iterable).

    Returns:
        (uint8 [sum of h*w]: each window's 0/1 values row-major, one after the other;
        int64 [N, 4]: x0, y0, width, height of each).
    """
    flat, bounds = [], []
    for w in windows:
        h, wd = w.mask.shape
        flat.append(w.mask.reshape(-1).view(np.uint8))
        bounds.append((w.x0, w.y0, wd, h))
    data = np.concatenate(flat) if flat else np.zeros(0, np.uint8)
    return data, np.array(bounds, np.int64).reshape(-1, 4)


def polygons(window: MaskWindow, tolerance: float = 0.0) -> list[list[float]]:
    """Trace a mask's outlines as COCO polygons, one per separate part, holes included.

    Traced on the mask upsampled 2x (nearest): OpenCV's contours then run through
    sub-pixel centres a quarter pixel inside the mask's edges, so every pixel centre of
    the mask is inside the outline and every other one outside. (Tracing at 1x, through
    the edge pixels' centres, loses half a pixel all round; what that costs small masks:
    docs/measurements.md.) COCO polygons have no holes, but pycocotools fills a polygon
    by the even-odd rule, so each hole is spliced into its part's outline through a
    bridge travelled both ways (a keyhole), which fills nothing. So pycocotools decodes
    the polygons to exactly the mask (tested against pycocotools on random masks with
    holes).

    Args:
        window: the pasted mask, its mask bool [h, w].
        tolerance: pixels; simplifies each outline and hole with Douglas-Peucker
            (cv2.approxPolyDP) before they are joined. 0: exact.

    Returns:
        One list [x1, y1, x2, y2, ...] per part, in image coordinates (pixel i spanning
        [i, i + 1)).
    """
    if not window.mask.any():
        return []
    up = np.kron(window.mask.view(np.uint8), np.ones((2, 2), np.uint8))
    # RETR_CCOMP: outer outlines, and the holes of each as its children (an island inside
    # a hole is an outer outline again).
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    links = hierarchy[0]  # per contour: next, previous, first child, parent

    def points(i: int) -> np.ndarray:
        contour = contours[i]
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, 2 * tolerance, True)
        return contour.reshape(-1, 2)

    out = []
    for i in range(len(contours)):
        if links[i][3] != -1:  # a hole: joined to its parent's outline below
            continue
        ring = points(i)
        hole = links[i][2]
        while hole != -1:
            inner = points(hole)
            if len(inner) >= 3:  # any bridge fills nothing; a short one reads better
                p = int(np.argmin(((ring - inner[0]) ** 2).sum(1)))
                ring = np.concatenate([ring[:p + 1], inner, inner[:1], ring[p:]])
            hole = links[hole][0]
        if len(ring) < 3:  # a simplified sliver: no area left
            continue
        image_points = (ring + 0.5) / 2 + (window.x0, window.y0)
        out.append(image_points.reshape(-1).tolist())
    return out


def dense_masks(pasted: ColumnRuns) -> np.ndarray:
    """Render the pasted masks into full images: uint8 [N, height, width], 1 inside each."""
    n, height, width = pasted.count, pasted.height, pasted.width
    edges = np.zeros((n, width, height + 1), np.int8)
    edges[pasted.owner, pasted.x, pasted.start] += 1  # starts are distinct, and so are stops
    edges[pasted.owner, pasted.x, pasted.stop] -= 1
    inside = np.cumsum(edges[:, :, :height], axis=2, dtype=np.int8) > 0
    return np.ascontiguousarray(inside.transpose(0, 2, 1)).view(np.uint8)


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


def paste(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
          threshold: float = MASK_THRESHOLD) -> ColumnRuns:
    """Paste mask-head probabilities into an image of height x width, as runs per column.

    Along a column the bilinear value is linear between the M cell rows (zero one cell
    beyond), so the rows at or above the threshold are found from the M + 2 knots of each
    column. A pixel whose value ties the threshold to float precision may fall either
    side of detectron2's grid_sample; every format then reads the same side (ColumnRuns).

    Args:
        masks: float [N, M, M] mask-head probabilities.
        boxes: float32 [N, 4] x1, y1, x2, y2 in image pixels.
        height, width: the image's size.
        threshold: a pixel is in the mask when its sampled probability is >= this.

    Returns:
        The N masks as ColumnRuns.

    Raises:
        ValueError: masks are not [N, M, M] or boxes not [N, 4].
    """
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or len(masks) != len(boxes):
        raise ValueError(f"expected masks [N, M, M] and boxes [N, 4], got "
                         f"{masks.shape} and {np.shape(boxes)}")
    n, m = masks.shape[:2]
    if n == 0:
        empty = np.zeros(0, np.int64)
        return ColumnRuns(empty, empty, empty, empty, 0, height, width)
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
    row = np.clip(row, np.maximum(np.floor(y1) - 1, 0),
                  np.minimum(np.ceil(y2) + 1, height)).astype(np.int64)
    start, stop = row[0::2], row[1::2]
    keep = stop > start  # a crossing between two pixel centres sets no pixel
    return ColumnRuns(who[0::2][keep], x[col][0::2][keep], start[keep], stop[keep], n,
                      height, width)


def encode_rle(pasted: ColumnRuns) -> list[bytes]:
    """Encode the pasted masks as COCO compressed RLE, without producing their pixels.

    The counts are what ``pycocotools.mask.encode`` gives for dense_masks(pasted).

    Returns:
        N COCO compressed RLE counts strings.
    """
    if pasted.count == 0:
        return []
    position = np.stack([pasted.x * pasted.height + pasted.start,
                         pasted.x * pasted.height + pasted.stop], 1).reshape(-1)
    return encode_runs(position, np.repeat(pasted.owner, 2), pasted.count, pasted.height,
                       pasted.width)


def encode_runs(position: np.ndarray, owner: np.ndarray, n: int, height: int, width: int
                ) -> list[bytes]:
    """Encode run boundaries (as for run_counts) as COCO compressed RLE of n masks.

    Shared by encode_rle and the device path (bls/pipeline/device.py).

    Returns:
        n COCO compressed RLE counts strings of height x width masks.
    """
    uncompressed = [{"size": [height, width], "counts": c}
                    for c in run_counts(position, owner, n, height * width)]
    return [r["counts"] for r in mask_utils.frPyObjects(uncompressed, height, width)]


def run_counts(position: np.ndarray, owner: np.ndarray, n: int, total: int) -> list[np.ndarray]:
    """Turn run boundaries into the uncompressed COCO RLE counts of each of n masks.

    Args:
        position: int64 [2R] flat column-major [start0, end0, start1, end1, ...] of R
            runs, ascending within each mask.
        owner: int64 [2R], their mask, ascending.
        n: the number of masks.
        total: pixels per mask.

    Returns:
        n int64 arrays of counts: each starts with a run of zeros (possibly 0) and
        alternates; a mask without runs is [total].
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
