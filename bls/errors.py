"""Errors a client can act on: each names the input, parameter or model and the problem,
and maps to one Triton error code, one outcome label (bls/backend/metrics.py) and one
message form, all from the one table ``_KINDS`` (``classify``, ``describe``).

| exception        | code        | retry?                                   |
| InvalidInput     | INVALID_ARG | no: fix the request                      |
| Cancelled        | CANCELLED   | no: the client asked for it              |
| Unavailable      | UNAVAILABLE | yes, elsewhere or after a backoff        |
| ModelTimeout     | UNAVAILABLE | yes (a subclass of Unavailable)          |
| anything else    | INTERNAL    | no: a bug or a failing model; see the log |
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """A request's input or parameter is unusable; answered INVALID_ARG.

    Only that request is refused; the rest of its batch is unaffected.

    Args:
        name: the input or parameter.
        problem: what is wrong with it, in words the client can act on.
        kind: "input" (a tensor) or "parameter" (a request parameter).
    """

    def __init__(self, name: str, problem: str, kind: str = "input"):
        self.name = name
        self.problem = problem
        self.kind = kind
        super().__init__(f"{kind} '{name}': {problem}")


class Cancelled(RuntimeError):
    """The client cancelled the request (or went away); answered CANCELLED.

    The work stops where it is; the CANCELLED answer is read by nobody, but Triton
    requires one."""


class Unavailable(RuntimeError):
    """The request is fine but cannot be served here now; answered UNAVAILABLE.

    A model it needs is not ready or its process is unhealthy, or the server or this
    model is stopping. A client should retry, on another replica or after a backoff."""


class ModelTimeout(Unavailable):
    """mask_rcnn did not answer within ``mask_rcnn_timeout_us``; answered UNAVAILABLE.

    The server is overloaded. Retryable like any Unavailable; counted under its own
    outcome."""


class ModelCallFailed(RuntimeError):
    """The called model ran and failed (it raised, or answered an error); answered INTERNAL."""


def classify(error: Exception | None) -> tuple[str, str]:
    """Classify an error by the module's table.

    Args:
        error: the exception a request ended with, or None for an answer.

    Returns:
        (Triton error code name, outcome label); ("", "ok") for None.
    """
    if error is None:
        return "", "ok"
    code, outcome, _ = _kind(error)
    return code, outcome


def describe(error: Exception, model: str) -> str:
    """Format an error for the client and the log as ``<model>: <message>``.

    An unexpected exception (INTERNAL, not ModelCallFailed) also names its type, so the
    log and the client agree on what failed."""
    prefix = _kind(error)[2]
    if prefix is None:
        prefix = "" if isinstance(error, ModelCallFailed) else f"{type(error).__name__}: "
    return f"{model}: {prefix}{error}"


# exception -> (Triton code, outcome label, message prefix); the first that matches.
_KINDS = ((InvalidInput, "INVALID_ARG", "invalid", ""),
          (Cancelled, "CANCELLED", "cancelled", "cancelled: "),
          (ModelTimeout, "UNAVAILABLE", "timeout", ""),
          (Unavailable, "UNAVAILABLE", "unavailable", ""))


def _kind(error: Exception) -> tuple[str, str, str | None]:
    return next((k[1:] for k in _KINDS if isinstance(error, k[0])), ("INTERNAL", "failed", None))

# Triton 2.51 answers a BLS call whose target cannot serve with code INTERNAL, whatever
# the reason: "Model 'mask_rcnn' is not ready.", "Stub process 'mask_rcnn_0_0'
# is not healthy.", "Server not ready" during a stop. These phrases tell them apart from
# a model that ran and failed.
_UNAVAILABLE_PHRASES = ("not ready", "is not healthy", "is stopping")
_TIMEOUT_PHRASES = ("request timeout expired",)  # Triton's own, where it enforces one


def model_call_error(model: str, code: str, message: str) -> Exception:
    """Turn a BLS response error of ``model`` into the exception the client should see.

    Args:
        model: the called model's name.
        code: the TritonError code's name (``INTERNAL``, ``UNAVAILABLE``, ...).
        message: the TritonError's message.

    Returns:
        Unavailable for UNAVAILABLE and not-ready / unhealthy / stopping messages;
        Cancelled for CANCELLED; ModelTimeout for a Triton request timeout; else
        ModelCallFailed.
    """
    text = f"{model} failed: {message}"
    lowered = message.lower()
    if any(p in lowered for p in _TIMEOUT_PHRASES):
        return ModelTimeout(f"{model} timed out: {message}")
    if code == "CANCELLED":
        return Cancelled(f"{model} call cancelled: {message}")
    if code == "UNAVAILABLE" or any(p in lowered for p in _UNAVAILABLE_PHRASES):
        return Unavailable(f"{model} is unavailable: {message}")
    return ModelCallFailed(text)
