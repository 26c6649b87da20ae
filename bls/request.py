"""Request parsing: the image bytes and the request parameters, validated.

Every problem raises InvalidInput naming the input or parameter, so a bad request is
answered alone with a message the client can act on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from bls.contract import (MAX_DETECTIONS_LIMIT, MAX_POLYGON_TOLERANCE, PIPELINE_INPUT,
                          REQUEST_PARAMETERS, MaskFormat)
from bls.errors import InvalidInput

_KNOWN = {p.name for p in REQUEST_PARAMETERS}
# Keys Triton reserves (protocol extension "parameters"). Its frontends consume most of
# them, but "headers" reaches the model as a parameter (measured on 2.51), and a
# "triton_" key refused today may be passed on by a later release.
RESERVED = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                      "headers"})
RESERVED_PREFIX = "triton_"


@dataclass(frozen=True)
class RequestOptions:
    score_threshold: float
    max_detections: int | None = None
    mask_format: MaskFormat = MaskFormat.RLE
    polygon_tolerance: float = 0.0


def image_bytes(tensor: np.ndarray | None, name: str = PIPELINE_INPUT.name) -> bytes:
    """The one encoded image in a BYTES tensor of shape [1] or [1, 1]."""
    if tensor is None:
        raise InvalidInput(name, "is missing")
    if tensor.dtype != np.object_:
        raise InvalidInput(name, f"must be BYTES (TYPE_STRING), got {tensor.dtype}")
    if tensor.size != 1:
        raise InvalidInput(name, f"must hold exactly one encoded image, got shape "
                                 f"{list(tensor.shape)}")
    value = tensor.reshape(-1)[0]
    if isinstance(value, str):  # some clients send text; keep its bytes
        value = value.encode()
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidInput(name, f"element must be bytes, got {type(value).__name__}")
    return bytes(value)


def parse_options(parameters: str | Mapping[str, Any] | None,
                  default_score_threshold: float,
                  forwarded_headers: re.Pattern | None = None) -> RequestOptions:
    """Request parameters (Triton hands them as a JSON object string) -> RequestOptions.

    Triton's reserved keys, and keys that ``forwarded_headers`` matches (the server's
    --http/--grpc-header-forward-pattern turns matching headers into parameters), are
    skipped. Any other unknown name is refused rather than ignored: a misspelt
    ``score_treshold`` silently answered with the default would be a lost instruction.
    """
    if parameters is None or parameters == "":
        parameters = {}
    elif isinstance(parameters, (str, bytes)):
        parameters = json.loads(parameters)
    unknown = sorted(k for k in set(parameters) - _KNOWN
                     if k not in RESERVED and not k.startswith(RESERVED_PREFIX)
                     and not (forwarded_headers and forwarded_headers.fullmatch(k)))
    if unknown:
        hint = ("" if forwarded_headers else "; a forwarded header? set pipeline_bls's config "
                "parameter header_forward_pattern to the server's header forward pattern")
        raise InvalidInput(unknown[0], f"is not a known request parameter; known: "
                                       f"{sorted(_KNOWN)}{hint}", "parameter")
    threshold = _bounded(parameters, "score_threshold", float, 0.0, 1.0, default_score_threshold)
    max_detections = _bounded(parameters, "max_detections", int, 0, MAX_DETECTIONS_LIMIT, None)
    mask_format = MaskFormat.RLE
    if "mask_format" in parameters:
        value = parameters["mask_format"]
        try:
            mask_format = MaskFormat(str(value).lower())
        except ValueError:
            raise InvalidInput("mask_format",
                               f"must be one of {[f.value for f in MaskFormat]}, got {value!r}",
                               "parameter") from None
    tolerance = _bounded(parameters, "polygon_tolerance", float, 0.0, MAX_POLYGON_TOLERANCE, 0.0,
                         " pixels")
    return RequestOptions(threshold, max_detections, mask_format, tolerance)


def _bounded(parameters: Mapping[str, Any], name: str, kind: type, lo, hi, default,
             unit: str = ""):
    """The parameter ``name`` as a number of ``kind`` in [lo, hi], or ``default`` when
    absent; InvalidInput naming it otherwise."""
    if name not in parameters:
        return default
    value = _number(name, parameters[name], kind)
    if not lo <= value <= hi:
        raise InvalidInput(name, f"must be in [{lo:g}, {hi:g}]{unit}, got {value}", "parameter")
    return value


def _number(name: str, value: Any, kind: type) -> float | int:
    """Accept a number of the right kind, or its decimal text (gRPC clients often send
    parameters as strings); refuse booleans, NaN and fractions for integers."""
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            raise InvalidInput(name, f"must be a number, got {value!r}", "parameter") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(name, f"must be a number, got {value!r}", "parameter")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidInput(name, f"must be a whole number, got {value}", "parameter")
        return int(value)
    if math.isnan(value):
        raise InvalidInput(name, "must be a number, got NaN", "parameter")
    return float(value)
