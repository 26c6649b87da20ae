"""Parse a request: the image bytes and the request parameters, validated.

Every problem raises InvalidInput naming the input or parameter, so a bad request is
answered alone with a message the client can act on.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import numpy as np

from bls.contract.parameters import REQUEST_PARAMETERS, RequestOptions
from bls.contract.tensors import PIPELINE_INPUT, PIPELINE_NAME, MaskFormat
from bls.errors import InvalidInput

# Keys Triton reserves (protocol extension "parameters"). Its frontends consume most of
# them, but "headers" reaches the model as a parameter (Triton 2.51), and a
# "triton_" key refused today may be passed on by a later release.
RESERVED = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                      "headers"})
RESERVED_PREFIX = "triton_"


def image_bytes(tensor: np.ndarray | None, name: str = PIPELINE_INPUT.name) -> bytes:
    """Take the one encoded image out of a request's image tensor.

    Args:
        tensor: object (bytes) [1] or [1, 1], or None when the input is missing.
        name: the input's name, for errors.

    Returns:
        The encoded image (text elements are taken as their UTF-8 bytes).

    Raises:
        InvalidInput: the tensor is missing, not BYTES, or does not hold exactly one
            bytes element.
    """
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


def request_image(pb_utils, request) -> bytes:
    """Read the encoded image of a pipeline request (its PIPELINE_INPUT), checked by
    image_bytes; InvalidInput naming the input otherwise."""
    tensor = pb_utils.get_input_tensor_by_name(request, PIPELINE_INPUT.name)
    return image_bytes(None if tensor is None else tensor.as_numpy())


def parse_options(parameters: str | Mapping[str, Any] | None,
                  default_score_threshold: float,
                  forwarded_headers: re.Pattern | None = None) -> RequestOptions:
    """Read a request's parameters into RequestOptions, by REQUEST_PARAMETERS.

    Triton's reserved keys, and keys that ``forwarded_headers`` matches (the server's
    --http/--grpc-header-forward-pattern turns matching headers into parameters), are
    skipped. Any other unknown name is refused rather than ignored: a misspelt
    ``score_treshold`` silently answered with the default would be a lost instruction.

    Args:
        parameters: the request's parameters as Triton hands them (a JSON object
            string), a mapping, or None.
        default_score_threshold: the score threshold when the request sets none.
        forwarded_headers: the model's ``header_forward_pattern``, or None.

    Raises:
        InvalidInput: an unknown parameter name, or a value its parser refuses.
    """
    if parameters is None or parameters == "":
        parameters = {}
    elif isinstance(parameters, (str, bytes)):
        parameters = json.loads(parameters)

    def skip(key: str) -> bool:
        return (key in RESERVED or key.startswith(RESERVED_PREFIX)
                or bool(forwarded_headers and forwarded_headers.fullmatch(key)))

    try:
        values = REQUEST_PARAMETERS.read(parameters, skip)
    except InvalidInput as e:
        if forwarded_headers is None and e.problem.startswith("is not a known"):
            raise InvalidInput(e.name, f"{e.problem}; a forwarded header? set "
                                       f"{PIPELINE_NAME}'s config parameter "
                                       f"header_forward_pattern to the server's header "
                                       f"forward pattern", e.kind) from None
        raise
    threshold = values["score_threshold"]
    return RequestOptions(default_score_threshold if threshold is None else threshold,
                          values["max_detections"], MaskFormat(values["mask_format"]),
                          values["polygon_tolerance"], values["probe"])
