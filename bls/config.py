"""Reading a model's config.pbtxt parameters (as Triton hands them to ``initialize``)."""

from __future__ import annotations

from dataclasses import fields

from bls.image import DecodeLimits


def parameters(model_config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def int_parameter(params: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    text = params.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"config parameter {name}={text!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"config parameter {name}={value} must be >= {minimum}")
    return value


def decode_limits(params: dict[str, str]) -> DecodeLimits:
    """DecodeLimits with any field overridden by a parameter of the same name."""
    default = DecodeLimits()
    return DecodeLimits(**{f.name: int_parameter(params, f.name, getattr(default, f.name), 1)
                           for f in fields(DecodeLimits)})
