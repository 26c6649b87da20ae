"""Mask paste and RLE against independent references: torch's grid_sample over the full
image (detectron2's paste_masks_in_image semantics) and pycocotools' own encoder."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from bls.masks import MaskWindow, dense_masks, encode_rle, paste_windows, rle_counts


def grid_sample_paste(masks: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """detectron2's _do_paste_mask without skip_empty: a full-image sampling grid per mask,
    grid_sample(bilinear, zeros, align_corners=False), then >= 0.5."""
    m = torch.from_numpy(masks[:, None].astype(np.float32))
    b = torch.from_numpy(boxes.astype(np.float32))
    x0, y0, x1, y1 = torch.split(b, 1, dim=1)
    img_y = torch.arange(0, height, dtype=torch.float32) + 0.5
    img_x = torch.arange(0, width, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    n = len(masks)
    gx = img_x[:, None, :].expand(n, height, width)
    gy = img_y[:, :, None].expand(n, height, width)
    grid = torch.stack([gx, gy], dim=3)
    out = F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out[:, 0] >= 0.5).numpy()


def random_case(rng, n, height, width, m=28):
    masks = rng.uniform(0, 1, (n, m, m)).astype(np.float32)
    # Smooth blobs, like real mask heads, plus raw noise in half of them.
    yy, xx = np.mgrid[0:m, 0:m]
    for i in range(0, n, 2):
        cy, cx, r = rng.uniform(4, m - 4), rng.uniform(4, m - 4), rng.uniform(3, m / 2)
        masks[i] = 1 / (1 + np.exp(((yy - cy) ** 2 + (xx - cx) ** 2 - r * r) / (2 * r)))
    x1 = rng.uniform(-20, width, n)
    y1 = rng.uniform(-20, height, n)
    x2 = x1 + rng.uniform(0.3, width * 0.8, n)
    y2 = y1 + rng.uniform(0.3, height * 0.8, n)
    boxes = np.stack([x1, y1, x2, y2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return masks[keep], boxes[keep].astype(np.float32)


@pytest.mark.parametrize("seed,height,width", [(0, 120, 160), (1, 97, 61), (2, 33, 250)])
def test_paste_matches_full_image_grid_sample(seed, height, width):
    rng = np.random.default_rng(seed)
    masks, boxes = random_case(rng, 40, height, width)
    expected = grid_sample_paste(masks, boxes, height, width)
    got = dense_masks(paste_windows(masks, boxes, height, width), height, width).astype(bool)
    assert got.shape == expected.shape
    # float32 reassociation may flip a pixel sitting exactly at 0.5; nothing more.
    mismatched = (got != expected).sum(axis=(1, 2))
    assert mismatched.max() <= 2, mismatched
    assert (got != expected).mean() < 1e-4


def test_paste_box_covering_whole_image_and_sub_pixel_box():
    height, width = 50, 40
    masks = np.full((3, 28, 28), 0.9, np.float32)
    boxes = np.array([[0, 0, width, height], [10.2, 10.2, 10.7, 10.6], [39.5, 0, 40, 50]],
                     np.float32)
    expected = grid_sample_paste(masks, boxes, height, width)
    got = dense_masks(paste_windows(masks, boxes, height, width), height, width).astype(bool)
    np.testing.assert_array_equal(got, expected)
    assert got[0].all()  # a confident mask over the whole image covers all of it


def test_windows_stay_inside_the_image():
    rng = np.random.default_rng(5)
    masks, boxes = random_case(rng, 30, 64, 48)
    for w in paste_windows(masks, boxes, 64, 48):
        h, wd = w.mask.shape
        assert 0 <= w.y0 and w.y0 + h <= 64 and 0 <= w.x0 and w.x0 + wd <= 48


def test_paste_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"masks \[N, M, M\]"):
        paste_windows(np.zeros((2, 28, 28)), np.zeros((3, 4)), 10, 10)


@pytest.mark.parametrize("seed,height,width", [(0, 120, 160), (3, 31, 17)])
def test_rle_equals_pycocotools_encode(seed, height, width):
    rng = np.random.default_rng(seed)
    masks, boxes = random_case(rng, 25, height, width)
    windows = paste_windows(masks, boxes, height, width)
    dense = dense_masks(windows, height, width)
    expected = mask_utils.encode(np.asfortranarray(dense.transpose(1, 2, 0)))
    got = encode_rle(windows, height, width)
    assert got == [e["counts"] for e in expected]
    decoded = mask_utils.decode([{"size": [height, width], "counts": c} for c in got])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), dense)


def test_rle_joins_runs_across_columns_of_a_full_height_window():
    # A window spanning the full height whose last row and first row are set: the run
    # continues from one column into the next, and must be one run.
    mask = np.zeros((6, 3), bool)
    mask[4:, 0] = mask[:2, 1] = True
    mask[:, 2] = True  # runs to the last pixel of the image
    window = MaskWindow(0, 1, mask)
    dense = dense_masks([window], 6, 4)
    expected = mask_utils.encode(np.asfortranarray(dense.transpose(1, 2, 0)))[0]["counts"]
    assert encode_rle([window], 6, 4) == [expected]
    assert rle_counts(window, 6, 4).tolist() == [10, 4, 4, 6]


def test_rle_of_empty_and_nothing():
    assert encode_rle([], 5, 5) == []
    empty = MaskWindow(0, 0, np.zeros((0, 0), bool))
    assert rle_counts(empty, 5, 5).tolist() == [25]
    blank = MaskWindow(1, 1, np.zeros((2, 2), bool))
    assert encode_rle([blank], 5, 5) == [mask_utils.encode(np.zeros((5, 5, 1), np.uint8, "F"))[0]["counts"]]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_rle_property(data):
    height = data.draw(st.integers(1, 12))
    width = data.draw(st.integers(1, 12))
    y0 = data.draw(st.integers(0, height - 1))
    x0 = data.draw(st.integers(0, width - 1))
    h = data.draw(st.integers(1, height - y0))
    w = data.draw(st.integers(1, width - x0))
    bits = data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    window = MaskWindow(y0, x0, np.array(bits, bool).reshape(h, w))
    dense = dense_masks([window], height, width)
    expected = mask_utils.encode(np.asfortranarray(dense.transpose(1, 2, 0)))[0]["counts"]
    assert encode_rle([window], height, width) == [expected]
