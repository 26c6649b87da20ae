"""Errors a client can act on: each names the input, parameter or model and the problem,
and maps to one Triton error code (bls/backend/responses.py) and one outcome label
(bls/backend/metrics.py).

| exception        | code        | retry?                                   |
| InvalidInput     | INVALID_ARG | no: fix the request                      |
| Cancelled        | CANCELLED   | no: the client asked for it              |
| Unavailable      | UNAVAILABLE | yes, elsewhere or after a backoff        |
| ModelTimeout     | UNAVAILABLE | yes (a subclass of Unavailable)          |
| anything else    | INTERNAL    | no: a bug or a failing model; see the log |
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """A request's input or parameter is unusable. Answered as INVALID_ARG for that
    request alone; the rest of its batch is unaffected.

    kind: "input" (a tensor) or "parameter" (a request parameter).
    """

    def __init__(self, name: str, problem: str, kind: str = "input"):
        self.name = name
        self.problem = problem
        self.kind = kind
        super().__init__(f"{kind} '{name}': {problem}")


class Cancelled(RuntimeError):
    """The client cancelled the request (or went away): the work stops where it is and
    the request is answered CANCELLED, which nobody reads but Triton requires."""


class Unavailable(RuntimeError):
    """The request is fine but cannot be served here now: a model it needs is not ready
    or its process is unhealthy, the server or this model is stopping. A client should
    retry, on another replica or after a backoff."""


class ModelTimeout(Unavailable):
    """mask_rcnn did not answer within ``mask_rcnn_timeout_us``: the server is
    overloaded. Retryable like any Unavailable; counted under its own outcome."""


class ModelCallFailed(RuntimeError):
    """The called model ran and failed (it raised, or answered an error). INTERNAL."""


def classify(error: Exception | None) -> tuple[str, str]:
    """(Triton error code name, outcome label) of an error, the table above; None is an
    answer: ("", "ok")."""
    if error is None:
        return "", "ok"
    for kind, code, outcome in _KINDS:
        if isinstance(error, kind):
            return code, outcome
    return "INTERNAL", "failed"


_KINDS = ((InvalidInput, "INVALID_ARG", "invalid"), (Cancelled, "CANCELLED", "cancelled"),
          (ModelTimeout, "UNAVAILABLE", "timeout"), (Unavailable, "UNAVAILABLE", "unavailable"))

# Triton 2.51 answers a BLS call whose target cannot serve with code INTERNAL, whatever
# the reason (measured): "Model 'mask_rcnn' is not ready.", "Stub process 'mask_rcnn_0_0'
# is not healthy.", "Server not ready" during a stop. These phrases tell them apart from
# a model that ran and failed.
_UNAVAILABLE_PHRASES = ("not ready", "is not healthy", "is stopping")
_TIMEOUT_PHRASES = ("request timeout expired",)  # Triton's own, where it enforces one


def model_call_error(model: str, code: str, message: str) -> Exception:
    """The exception for a BLS response error of ``model``.

    code: the TritonError code's name (``INTERNAL``, ``UNAVAILABLE``, ...); message: its
    message. UNAVAILABLE and not-ready / unhealthy / stopping messages -> Unavailable;
    CANCELLED -> Cancelled; a Triton request timeout -> ModelTimeout; else
    ModelCallFailed."""
    text = f"{model} failed: {message}"
    lowered = message.lower()
    if any(p in lowered for p in _TIMEOUT_PHRASES):
        return ModelTimeout(f"{model} timed out: {message}")
    if code == "CANCELLED":
        return Cancelled(f"{model} call cancelled: {message}")
    if code == "UNAVAILABLE" or any(p in lowered for p in _UNAVAILABLE_PHRASES):
        return Unavailable(f"{model} is unavailable: {message}")
    return ModelCallFailed(text)
