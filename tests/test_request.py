"""Request parsing: good values pass, every bad one names the parameter or input."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bls.backend.request import image_bytes, parse_options
from bls.contract.parameters import (MAX_DETECTIONS_LIMIT, MAX_POLYGON_TOLERANCE,
                                     REQUEST_PARAMETERS, RequestOptions)
from bls.contract.tensors import MaskFormat
from bls.errors import InvalidInput


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
    ({"score_threshold": float("nan")}, "score_threshold", "must be a number, got nan"),
    ({"max_detections": -1}, "max_detections", "must be in"),
    ({"max_detections": MAX_DETECTIONS_LIMIT + 1}, "max_detections", "must be in"),
    ({"max_detections": 2.5}, "max_detections", "whole number"),
    ({"mask_format": "png"}, "mask_format",
     re.escape(f"must be one of {[f.value for f in MaskFormat]}, got 'png'")),
    ({"polygon_tolerance": -1}, "polygon_tolerance", "must be in"),
    ({"polygon_tolerance": "a"}, "polygon_tolerance", "must be a number"),
    ({"score_treshold": 0.1}, "score_treshold", "is not a known parameter of pipeline_bls"),
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


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6)
NAMES = (st.sampled_from(REQUEST_PARAMETERS.names)
         | st.sampled_from(["Score_Threshold", "max_detection", ""]) | st.text(max_size=10))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(NAMES, JSON_VALUES, max_size=4), st.booleans())
def test_fuzz_parameters_parse_or_refuse(parameters, as_json):
    """Any parameters, as a dict or as the JSON text Triton hands over: RequestOptions
    within bounds, or InvalidInput naming a parameter, never another exception."""
    import json as json_module

    try:
        options = parse_options(json_module.dumps(parameters) if as_json else parameters, 0.5)
    except InvalidInput as e:
        assert e.kind == "parameter" and str(e).startswith(f"parameter '{e.name}': ")
    else:
        assert 0 <= options.score_threshold <= 1
        assert options.max_detections is None or 0 <= options.max_detections <= MAX_DETECTIONS_LIMIT
        assert 0 <= options.polygon_tolerance <= MAX_POLYGON_TOLERANCE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=8) | st.text(max_size=8) | st.integers(), max_size=3),
       st.sampled_from([(-1,), (1, -1), (-1, 1)]))
def test_fuzz_image_tensor_one_image_or_refuse(elements, shape):
    tensor = np.empty(len(elements), dtype=object)
    tensor[:] = elements
    try:
        data = image_bytes(tensor.reshape(shape))
    except InvalidInput as e:
        assert str(e).startswith("input 'image': ")
    else:
        assert isinstance(data, bytes) and len(elements) == 1
