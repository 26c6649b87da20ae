"""bls/errors.py: which code and outcome each failure gets, from the messages Triton 2.51
really gives (measured on the embedded server: every BLS failure has code INTERNAL)."""

import pytest

from bls.errors import (Cancelled, InvalidInput, ModelCallFailed, ModelTimeout, Unavailable,
                        classify, model_call_error)


@pytest.mark.parametrize("code,message,kind", [
    ("INTERNAL", "Model mask_rcnn - Error when running inference: Failed for execute the "
                 "inference request. Model 'mask_rcnn' is not ready.", Unavailable),
    ("INTERNAL", "Stub process 'mask_rcnn_0_0' is not healthy.", Unavailable),
    ("INTERNAL", "Model mask_rcnn - Error when running inference: Server not ready", Unavailable),
    ("UNAVAILABLE", "anything", Unavailable),
    ("UNAVAILABLE", "Request timeout expired", ModelTimeout),
    ("CANCELLED", "the client went away", Cancelled),
    ("INTERNAL", "mask_rcnn: RuntimeError: CUDA out of memory", ModelCallFailed),
    ("INTERNAL", "Failed to process the request(s) for model 'mask_rcnn_0_0', message: "
                 "RuntimeError: injected fault", ModelCallFailed),
])
def test_a_bls_failure_is_classified_by_code_and_message(code, message, kind):
    error = model_call_error("mask_rcnn", code, message)
    assert type(error) is kind
    assert message in str(error) and str(error).startswith("mask_rcnn ")


@pytest.mark.parametrize("error,expected", [
    (None, ("", "ok")),
    (InvalidInput("image", "is empty"), ("INVALID_ARG", "invalid")),
    (Cancelled("before the model"), ("CANCELLED", "cancelled")),
    (ModelTimeout("late"), ("UNAVAILABLE", "timeout")),
    (Unavailable("stopping"), ("UNAVAILABLE", "unavailable")),
    (ModelCallFailed("mask_rcnn failed"), ("INTERNAL", "failed")),
    (KeyError("a bug"), ("INTERNAL", "failed")),
])
def test_each_error_has_one_code_and_one_outcome(error, expected):
    assert classify(error) == expected
