"""Model config parameters: declared once per model, read strictly at load.

Each Python model of the repository has a ``ParameterSet``: the parameters its
``config.pbtxt`` may set, with their parser, default and meaning. ``initialize`` reads
its config through it, so a misspelt parameter (``worker_thread``) fails the model load
with a message naming it and listing the known ones, instead of being silently ignored.
``python -m export tune`` asks the same registry which model reads which parameter, and
the README's parameter tables follow it.

Triton hands ``initialize`` the config as JSON: ``parameters`` maps each key to
``{"string_value": text}``. An empty text means "not set": the default applies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bls.contract import (ENSEMBLE_NAME, MODEL_NAME, MONITORING_NAME, PIPELINE_NAME,
                          POSTPROCESS_NAME, PREPROCESS_NAME)

Parser = Callable[[str, str], Any]

# Keys that Triton's Python backend or this project's deployment tooling set on any Python
# model: the execution environment (Triton), the Python it was built for (export, read by
# run_triton.sh) and the backend's own input placement switch.
DEPLOYMENT_KEYS = ("EXECUTION_ENV_PATH", "execution_env_python", "FORCE_CPU_ONLY_INPUT_TENSORS")


def whole(minimum: int = 0, maximum: int | None = None) -> Parser:
    """A parser for a whole number in [minimum, maximum]."""
    def parse(name: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"config parameter {name}={text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise ValueError(f"config parameter {name}={value} must be {bound}")
        return value
    return parse


def number(minimum: float, maximum: float = math.inf) -> Parser:
    """A parser for a finite number in [minimum, maximum]."""
    def parse(name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"config parameter {name}={text!r} is not a number") from None
        if not math.isfinite(value) or not minimum <= value <= maximum:
            raise ValueError(f"config parameter {name}={value} must be in [{minimum}, {maximum}]")
        return value
    return parse


def text(name: str, value: str) -> str:
    return value.strip()


def one_of(*choices: str) -> Parser:
    """A parser for one of ``choices``."""
    def parse(name: str, value: str) -> str:
        if value.strip() not in choices:
            raise ValueError(f"config parameter {name}={value!r} must be one of {list(choices)}")
        return value.strip()
    return parse


def pattern(name: str, value: str) -> re.Pattern:
    """A regular expression, matched case-insensitively against the whole key."""
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as e:
        raise ValueError(f"config parameter {name}={value!r} is not a regular expression: "
                         f"{e}") from None


@dataclass(frozen=True)
class ConfigParameter:
    """name: the key in config.pbtxt's ``parameters``; parse: (name, text) -> value,
    raising ValueError that names the parameter; default: the value when unset or empty;
    doc: one line for the README."""

    name: str
    parse: Parser
    default: Any
    doc: str


@dataclass(frozen=True)
class ParameterSet:
    """The parameters one model reads."""

    model: str
    parameters: tuple[ConfigParameter, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def read(self, model_config: Mapping) -> dict[str, Any]:
        """The model's config (as ``initialize`` gets it) -> value by parameter name.

        Raises ValueError naming every unknown key with the known ones, or the first
        value that does not parse."""
        raw = raw_parameters(model_config)
        unknown = sorted(set(raw) - set(self.names) - set(DEPLOYMENT_KEYS))
        if unknown:
            raise ValueError(f"{self.model}: unknown config parameter(s) {unknown}; "
                             f"known: {sorted(self.names)} (and {list(DEPLOYMENT_KEYS)})")
        values = {}
        for p in self.parameters:
            value = raw.get(p.name, "")
            values[p.name] = p.default if value.strip() == "" else p.parse(p.name, value)
        return values


def raw_parameters(model_config: Mapping) -> dict[str, str]:
    """``parameters`` of a config as Triton hands it to ``initialize``: key -> text."""
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


# --------------------------------------------------------------------------- registry
# Defaults that other modules also need live here, so there is one number for each.
MAX_ENCODED_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000  # 8000x8000; a 3-channel copy is ~190 MB
# The largest answer pipeline_bls (or the ensemble's postprocess) builds: 16 MiB, so that
# even rendered as HTTP JSON (the costliest form, measured in docs/answers.md) one answer
# stays under 1 GiB of server memory. It holds dense masks of 52 detections at 640x480
# or 8 at 1920x1080; larger answers are refused with INVALID_ARG naming mask_format=rle.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

# How images are resized (bls/image.py): PIL's bilinear, as detectron2's ResizeTransform
# (exact parity), or torch's antialiased bilinear (faster; within 1 on a few pixels).
RESIZE_PIL, RESIZE_TORCH = "pil", "torch"
RESIZE = ConfigParameter("resize", one_of(RESIZE_PIL, RESIZE_TORCH), RESIZE_PIL,
                         "pil: detectron2's resize, exact; torch: 2-5x faster, a few values 1 "
                         "off (docs/benchmarks.md)")

# bls/memory.py: keep freed memory for the next request (faster; the process then holds
# its peak working set) or return it to the system.
KEEP_FREED_MEMORY = ConfigParameter(
    "keep_freed_memory", one_of("true", "false"), "true",
    "true: the process keeps freed memory for the next request (1080p prepare 31 -> 21 ms; "
    "it then holds its peak working set); false: glibc's defaults")

METADATA = ConfigParameter("model_metadata", text, "",
                           "the export's ModelMetadata as JSON (written by `python -m export`)")
DECODE_LIMITS = (
    ConfigParameter("max_encoded_bytes", whole(1), MAX_ENCODED_BYTES,
                    "largest encoded image accepted, bytes"),
    ConfigParameter("max_pixels", whole(1), MAX_PIXELS,
                    "largest image accepted, pixels (read from the header before decoding)"),
)
ANSWER_LIMIT = ConfigParameter(
    "max_answer_bytes", whole(1), MAX_ANSWER_BYTES,
    "largest answer built, bytes (dense masks count N x H x W); larger: INVALID_ARG")

PIPELINE_PARAMETERS = ParameterSet(PIPELINE_NAME, (
    METADATA, *DECODE_LIMITS, RESIZE, ANSWER_LIMIT, KEEP_FREED_MEMORY,
    ConfigParameter("mask_rcnn_timeout_us", whole(0), 0,
                    "longest wait for mask_rcnn's answer, microseconds (0: none); past it "
                    "the request is answered UNAVAILABLE"),
    ConfigParameter("worker_threads", whole(1), 2, "decode, resize and paste threads"),
    ConfigParameter("max_in_flight_requests", whole(1), None,
                    "requests one instance works on at once (default 2 x max_batch_size); "
                    "the rest wait in Triton's queue"),
    ConfigParameter("monitoring_policy", text, "",
                    "JSON (bls/policy.py): when an answered request is also sent to "
                    "monitoring; empty: never"),
    ConfigParameter("device", text, "",
                    "empty: numpy on the host; cpu or cuda[:N]: torch on that device, "
                    "tensors exchanged with mask_rcnn by DLPack"),
    ConfigParameter("header_forward_pattern", pattern, None,
                    "request parameters whose names match this regex are forwarded headers "
                    "(the server's --http/--grpc-header-forward-pattern) and are skipped"),
))

MONITORING_PARAMETERS = ParameterSet(MONITORING_NAME, (
    METADATA,
    ConfigParameter("queue_size", whole(1), 1000,
                    "events waiting for the worker; more are dropped and counted"),
    ConfigParameter("queue_max_bytes", whole(1), 64 * 1024 * 1024,
                    "bytes of events waiting for the worker; more are dropped and counted"),
    ConfigParameter("max_event_bytes", whole(1), 16 * 1024 * 1024,
                    "largest event accepted (image and predictions included); larger: "
                    "INVALID_ARG"),
    ConfigParameter("max_subscriptions", whole(1), 16,
                    "alert streams open at once; more are refused UNAVAILABLE"),
    ConfigParameter("drift_reference_size", whole(1), 500, "events in the drift reference"),
    ConfigParameter("drift_window_size", whole(1), 500, "events in the current drift window"),
    ConfigParameter("drift_check_every", whole(1), 50, "events between drift checks"),
    ConfigParameter("drift_threshold", number(0.0), 0.25, "PSI above which drift is alerted"),
    ConfigParameter("capture_dir", text, "",
                    "absolute directory for captured samples; empty: no capture"),
    ConfigParameter("capture_max_bytes", whole(1), 256 * 1024 * 1024,
                    "disk quota of the captured samples, bytes"),
    ConfigParameter("capture_max_files", whole(2), 1000, "files kept in capture_dir"),
))

PREPROCESS_PARAMETERS = ParameterSet(PREPROCESS_NAME, (METADATA, *DECODE_LIMITS, RESIZE,
                                                     KEEP_FREED_MEMORY))
POSTPROCESS_PARAMETERS = ParameterSet(POSTPROCESS_NAME, (METADATA, ANSWER_LIMIT,
                                                       KEEP_FREED_MEMORY))
# mask_rcnn's Python runner (configs/embedded.pbtxt); its libtorch config is read by the
# PyTorch backend, not by this registry.
RUNNER_PARAMETERS = ParameterSet(MODEL_NAME, (
    METADATA,
    ConfigParameter("intra_op_threads", whole(0), 0,
                    "torch intra-op threads per instance (0: torch's default)"),
    ConfigParameter("model_file", text, "model.pt", "the TorchScript file in the version folder"),
))

# Python model name -> what it reads. The ensemble has no model.py.
PYTHON_MODELS: dict[str, ParameterSet] = {
    s.model: s for s in (PIPELINE_PARAMETERS, MONITORING_PARAMETERS, PREPROCESS_PARAMETERS,
                         POSTPROCESS_PARAMETERS, RUNNER_PARAMETERS)}
assert ENSEMBLE_NAME not in PYTHON_MODELS
