"""Request parsing: good values pass, every bad one names the parameter or input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bls.contract import MAX_DETECTIONS_LIMIT, MaskFormat
from bls.errors import InvalidInput
from bls.request import RequestOptions, image_bytes, parse_options


def test_defaults_and_values():
    assert parse_options(None, 0.5) == RequestOptions(0.5, None, MaskFormat.RLE)
    assert parse_options("{}", 0.3) == RequestOptions(0.3)
    got = parse_options('{"score_threshold": 0, "max_detections": 5, "mask_format": "DENSE"}', 0.5)
    assert got == RequestOptions(0.0, 5, MaskFormat.DENSE)
    # gRPC clients often send strings
    assert parse_options({"score_threshold": "0.25", "max_detections": "3"}, 0.5) == RequestOptions(0.25, 3)


@pytest.mark.parametrize("params,name,problem", [
    ({"score_threshold": -0.1}, "score_threshold", r"must be in \[0, 1\], got -0.1"),
    ({"score_threshold": 1.5}, "score_threshold", r"must be in \[0, 1\]"),
    ({"score_threshold": "high"}, "score_threshold", "must be a number"),
    ({"score_threshold": True}, "score_threshold", "must be a number"),
    ({"score_threshold": float("nan")}, "score_threshold", "NaN"),
    ({"max_detections": -1}, "max_detections", "must be in"),
    ({"max_detections": MAX_DETECTIONS_LIMIT + 1}, "max_detections", "must be in"),
    ({"max_detections": 2.5}, "max_detections", "whole number"),
    ({"mask_format": "png"}, "mask_format", r"must be one of \['rle', 'dense', 'none'\], got 'png'"),
    ({"score_treshold": 0.1}, "score_treshold", "not a known request parameter"),
])
def test_bad_parameters_name_the_parameter(params, name, problem):
    with pytest.raises(InvalidInput, match=problem) as info:
        parse_options(params, 0.5)
    assert str(info.value).startswith(f"parameter '{name}': ")


@given(st.floats(0, 1), st.integers(0, MAX_DETECTIONS_LIMIT), st.sampled_from(list(MaskFormat)))
def test_every_valid_combination_parses(threshold, cap, fmt):
    got = parse_options({"score_threshold": threshold, "max_detections": cap, "mask_format": fmt.value}, 0.5)
    assert got == RequestOptions(threshold, cap, fmt)


def test_image_bytes_accepts_one_image_in_either_shape():
    for shape in [(1,), (1, 1)]:
        assert image_bytes(np.array([b"abc"], dtype=object).reshape(shape)) == b"abc"
    assert image_bytes(np.array(["text"], dtype=object)) == b"text"


@pytest.mark.parametrize("tensor,problem", [
    (None, "is missing"),
    (np.zeros((1,), np.uint8), "must be BYTES"),
    (np.array([b"a", b"b"], dtype=object), r"exactly one encoded image, got shape \[2\]"),
    (np.array([3], dtype=object), "element must be bytes, got int"),
])
def test_bad_image_tensor_names_the_input(tensor, problem):
    with pytest.raises(InvalidInput, match=problem) as info:
        image_bytes(tensor)
    assert str(info.value).startswith("input 'image': ")
