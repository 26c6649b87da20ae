"""Build Triton responses from pipeline results and errors.

``pb_utils`` is passed in, so this module imports without triton_python_backend_utils
(tests hand it a test double)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from bls.errors import classify, describe


def error_response(pb_utils, error: Exception, model: str):
    """Build the error InferenceResponse for ``error``: its message and Triton code as
    bls/errors.py classifies it."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(
        describe(error, model), getattr(pb_utils.TritonError, classify(error)[0])))


CODES = ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED",
         "ALREADY_EXISTS", "CANCELLED")


def code_name(pb_utils, code) -> str:
    """Name a TritonError's code() (``pb_utils.TritonError.<NAME>`` equals it); else UNKNOWN."""
    return next((n for n in CODES if getattr(pb_utils.TritonError, n, None) == code), "UNKNOWN")


def output_response(pb_utils, outputs: Mapping[str, np.ndarray], batched: bool,
                    requested: Sequence[str] = ()):
    """Build an InferenceResponse from output arrays.

    Args:
        outputs: arrays by output name, without a batch dim.
        batched: add the leading batch dim of 1 that a model with max_batch_size > 0
            must return per request.
        requested: only these outputs (empty: all).
    """
    return pb_utils.InferenceResponse([
        pb_utils.Tensor(name, value[np.newaxis] if batched else value)
        for name, value in outputs.items() if not requested or name in requested])
