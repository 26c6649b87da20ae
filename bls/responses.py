"""Building Triton responses from pipeline results. ``pb_utils`` is passed in, so this
module imports without triton_python_backend_utils (tests hand it a test double)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from bls.errors import Cancelled, InvalidInput


def error_response(pb_utils, error: Exception, model: str):
    """InvalidInput -> INVALID_ARG with its message; Cancelled -> CANCELLED; anything
    else -> INTERNAL, prefixed with the model name and the exception type so the log and
    the client agree."""
    if isinstance(error, InvalidInput):
        message, code = f"{model}: {error}", "INVALID_ARG"
    elif isinstance(error, Cancelled):
        message, code = f"{model}: cancelled: {error}", "CANCELLED"
    else:
        message, code = f"{model}: {type(error).__name__}: {error}", "INTERNAL"
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code)))


def output_response(pb_utils, outputs: Mapping[str, np.ndarray], batched: bool):
    """Arrays by name -> InferenceResponse; ``batched`` adds the leading batch dim of 1
    that a model with max_batch_size > 0 must return per request."""
    return pb_utils.InferenceResponse([
        pb_utils.Tensor(name, value[np.newaxis] if batched else value)
        for name, value in outputs.items()])
