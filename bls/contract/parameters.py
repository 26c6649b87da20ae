"""Declare every parameter of the product once, and read them all by one set of rules.

A ``ParameterSet`` lists the parameters one place may set: a Python model's
``config.pbtxt`` (read in ``initialize``), a request (REQUEST_PARAMETERS), the fields of
``monitoring_policy`` (bls/monitoring/policy.py) or a 'subscribe' command
(bls/monitoring/subscriptions.py). Reading refuses an unknown name (a misspelt
``worker_thread`` or ``score_treshold`` would otherwise be a lost instruction) and a
value its parser refuses, with InvalidInput naming the parameter, the problem and the
known names. ``python -m export tune`` asks this registry which model reads which
parameter, and the README's parameter tables follow it.

Values arrive as text (Triton hands ``initialize`` the config's ``parameters`` as
``{"string_value": text}``; gRPC clients often send numbers as text) or as JSON values;
every parser takes both. An absent value, or empty text, means "not set": the default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_NAME, MONITORING_NAME, PIPELINE_NAME,
                                  POSTPROCESS_NAME, PREPROCESS_NAME, MaskFormat)
from bls.errors import InvalidInput

# value -> parsed value; raises ValueError whose text is the problem ("must be ...").
Parser = Callable[[Any], Any]

# Keys that Triton's Python backend or this project's deployment tooling set on any Python
# model: the execution environment (Triton), the Python it was built for (export, read by
# run_triton.sh), the backend's own input placement switch, and the watchdog's count of
# in-place reloads (server/watchdog.py: a load with an unchanged config does nothing).
WATCHDOG_RELOAD = "watchdog_reload"
DEPLOYMENT_KEYS = ("EXECUTION_ENV_PATH", "execution_env_python", "FORCE_CPU_ONLY_INPUT_TENSORS",
                   WATCHDOG_RELOAD)


def _bound(lo, hi) -> str:
    return f">= {lo:g}" if hi in (None, math.inf) else f"in [{lo:g}, {hi:g}]"


def _numeric(value: Any, whole_number: bool) -> int | float:
    """A JSON number, or its decimal text, as an int (``whole_number``) or a float;
    ValueError naming what it must be otherwise (booleans, NaN and fractions included)."""
    what = "a whole number" if whole_number else "a number"
    if isinstance(value, str):
        try:
            value = (int if whole_number else float)(value.strip())
        except ValueError:
            raise ValueError(f"must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or (whole_number and isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"must be {what}, got {value!r}")
    return int(value) if whole_number else float(value)


def _within(value: int | float, lo, hi) -> int | float:
    if not (math.isfinite(value) and lo <= value <= (math.inf if hi is None else hi)):
        raise ValueError(f"must be {_bound(lo, hi)}, got {value}")
    return value


def whole(lo: int = 0, hi: int | None = None) -> Parser:
    """Make a parser for a whole number in [lo, hi] (hi None: no upper bound), or its text."""
    return lambda value: _within(_numeric(value, True), lo, hi)


def number(lo: float, hi: float = math.inf) -> Parser:
    """Make a parser for a finite number in [lo, hi], or its decimal text."""
    return lambda value: _within(_numeric(value, False), lo, hi)


def one_of(*choices: str) -> Parser:
    """Make a parser for one of ``choices`` (text, case-insensitive)."""
    def parse(value: Any) -> str:
        text = str(value).strip().lower() if isinstance(value, str) else None
        if text not in choices:
            raise ValueError(f"must be one of {list(choices)}, got {value!r}")
        return text
    return parse


def flag(value: Any) -> bool:
    """Parse true or false (JSON, or its text)."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def flag(value: Any) -> bool:
    """Parse a yes/no value: JSON true/false, or their text (case-insensitive)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in ("true", "false"):
        raise ValueError(f"must be true or false, got {value!r}")
    return text == "true"


def text(value: Any) -> str:
    """Parse text, stripped of surrounding whitespace."""
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {value!r}")
    return value.strip()


def names(value: Any) -> tuple[str, ...]:
    """Parse a list of names (JSON)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of names, got {value!r}")
    return tuple(value)


def pattern(value: Any) -> re.Pattern:
    """Parse a regular expression, to be matched case-insensitively against a whole key."""
    try:
        return re.compile(text(value), re.IGNORECASE)
    except re.error as e:
        raise ValueError(f"is not a regular expression: {e}, got {value!r}") from None


@dataclass(frozen=True)
class Parameter:
    """Declare one parameter.

    Attributes:
        name: the key.
        parse: value -> parsed (this module's parsers); raises ValueError whose text is
            the problem.
        default: the value when unset.
        doc: one line for the README.
    """

    name: str
    parse: Parser
    default: Any
    doc: str


@dataclass(frozen=True)
class ParameterSet:
    """Declare the parameters one place reads, and read them.

    Attributes:
        owner: who reads them (a model's name, or a config parameter holding JSON).
        kind: what a parameter is called in errors ("config parameter", "parameter", ...).
        parameters: the Parameters.
    """

    owner: str
    kind: str
    parameters: tuple[Parameter, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The parameters' names, in order."""
        return tuple(p.name for p in self.parameters)

    def read(self, values: Mapping[str, Any], skip: Callable[[str], bool] = lambda k: False
             ) -> dict[str, Any]:
        """Parse values by name into every parameter's value (defaults for the unset).

        Args:
            values: raw values by name (text or JSON values).
            skip: keys for which it is true are passed over.

        Returns:
            Parsed values by name, one for every parameter.

        Raises:
            InvalidInput: (a ValueError) naming the first unknown key with the known
                ones, or the first value that does not parse.
        """
        unknown = sorted(k for k in values if k not in self.names and not skip(k))
        if unknown:
            raise InvalidInput(unknown[0], f"is not a known {self.kind} of {self.owner}; "
                                           f"known: {sorted(self.names)}", self.kind)
        parsed = {}
        for p in self.parameters:
            value = values.get(p.name)
            if value is None or (isinstance(value, str) and not value.strip()):
                parsed[p.name] = p.default
                continue
            try:
                parsed[p.name] = p.parse(value)
            except ValueError as e:
                raise InvalidInput(p.name, str(e), self.kind) from None
        return parsed

    def read_config(self, model_config: Mapping) -> dict[str, Any]:
        """Parse a model's config (as ``initialize`` gets it), as ``read``.

        Keys set by the deployment (DEPLOYMENT_KEYS) are passed over.
        """
        return self.read(raw_parameters(model_config), skip=DEPLOYMENT_KEYS.__contains__)


def raw_parameters(model_config: Mapping) -> dict[str, str]:
    """Take the ``parameters`` of a config as Triton hands it to ``initialize``: key -> text."""
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def config_parameters(model: str, *parameters: Parameter) -> ParameterSet:
    """Declare the config parameters of the Python model ``model``."""
    return ParameterSet(model, "config parameter", parameters)


# --------------------------------------------------------------------------- registry
# Defaults that other modules also need live here, so there is one number for each.
MAX_ENCODED_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000  # 8000x8000; a 3-channel copy is ~190 MB
# The largest answer pipeline_bls (or the ensemble's postprocess) builds: 16 MiB, so that
# even rendered as HTTP JSON (the costliest form, docs/answers.md) one answer
# stays under 1 GiB of server memory. It holds dense masks of 52 detections at 640x480
# or 8 at 1920x1080; larger answers are refused with INVALID_ARG naming mask_format=rle.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

# How images are resized (bls/pipeline/image.py): PIL's bilinear, as detectron2's
# ResizeTransform (exact parity), or torch's antialiased bilinear (faster; within 1;
# docs/benchmarks.md, 'The resize: exact or fast').
RESIZE_PIL, RESIZE_TORCH = "pil", "torch"
RESIZE = Parameter("resize", one_of(RESIZE_PIL, RESIZE_TORCH), RESIZE_PIL,
                   "pil: detectron2's resize, exact; torch: faster, a few values 1 off "
                   "(docs/benchmarks.md)")

# bls/backend/process.py: keep freed memory for the next request, or return it.
KEEP_FREED_MEMORY = Parameter(
    "keep_freed_memory", one_of("true", "false"), "true",
    "true: the process keeps freed memory for the next request (faster, docs/benchmarks.md; "
    "it then holds its peak working set); false: glibc's defaults")

METADATA = Parameter("model_metadata", text, "",
                     "the export's ModelMetadata as JSON (written by `python -m export`)")
DECODE_LIMITS = (
    Parameter("max_encoded_bytes", whole(1), MAX_ENCODED_BYTES,
              "largest encoded image accepted, bytes"),
    Parameter("max_pixels", whole(1), MAX_PIXELS,
              "largest image accepted, pixels (read from the header before decoding)"),
)
ANSWER_LIMIT = Parameter(
    "max_answer_bytes", whole(1), MAX_ANSWER_BYTES,
    "largest answer built, bytes (dense masks count N x H x W); larger: INVALID_ARG")

PIPELINE_PARAMETERS = config_parameters(
    PIPELINE_NAME,
    METADATA, *DECODE_LIMITS, RESIZE, ANSWER_LIMIT, KEEP_FREED_MEMORY,
    Parameter("mask_rcnn_timeout_us", whole(0), 0,
              "longest wait for mask_rcnn's answer, microseconds (0: none); past it "
              "the request is answered UNAVAILABLE"),
    Parameter("worker_threads", whole(1), 2,
              "requests decoded, resized or pasted at once (the CPU stages' bound)"),
    Parameter("max_in_flight_requests", whole(1), None,
              "requests one instance works on at once, a model call that outlived "
              "mask_rcnn_timeout_us included (default 2 x max_batch_size); the rest wait"),
    Parameter("monitoring_policy", text, "",
              "JSON (bls/monitoring/policy.py): when an answered request is also sent to "
              "monitoring; empty: never"),
    Parameter("device", text, "",
              "empty: numpy on the host; cpu or cuda[:N]: torch on that device, "
              "tensors exchanged with mask_rcnn by DLPack"),
    Parameter("header_forward_pattern", pattern, None,
              "request parameters whose names match this regex are forwarded headers "
              "(the server's --http/--grpc-header-forward-pattern) and are skipped"),
)

MONITORING_PARAMETERS = config_parameters(
    MONITORING_NAME,
    METADATA,
    Parameter("queue_size", whole(1), 1000,
              "events waiting for the worker; more are dropped and counted"),
    Parameter("queue_max_bytes", whole(1), 64 * 1024 * 1024,
              "bytes of events waiting for the worker; more are dropped and counted"),
    Parameter("max_event_bytes", whole(1), 16 * 1024 * 1024,
              "largest event accepted (image and predictions included); larger: "
              "INVALID_ARG"),
    Parameter("max_subscriptions", whole(1), 16,
              "alert streams open at once; more are refused UNAVAILABLE"),
    Parameter("drift_reference_size", whole(1), 500, "events in the drift reference"),
    Parameter("drift_window_size", whole(1), 500, "events in the current drift window"),
    Parameter("drift_check_every", whole(1), 50, "events between drift checks"),
    Parameter("drift_threshold", number(0.0), 0.25, "PSI above which drift is alerted"),
    Parameter("capture_dir", text, "",
              "absolute directory for captured samples; empty: no capture"),
    Parameter("capture_max_bytes", whole(1), 256 * 1024 * 1024,
              "disk quota of the captured samples, bytes"),
    Parameter("capture_max_files", whole(2), 1000, "files kept in capture_dir"),
)

PREPROCESS_PARAMETERS = config_parameters(PREPROCESS_NAME, METADATA, *DECODE_LIMITS, RESIZE,
                                          KEEP_FREED_MEMORY)
POSTPROCESS_PARAMETERS = config_parameters(POSTPROCESS_NAME, METADATA, ANSWER_LIMIT,
                                           KEEP_FREED_MEMORY)
# mask_rcnn's Python runner (configs/embedded.pbtxt); its libtorch config is read by the
# PyTorch backend, not by this registry.
RUNNER_PARAMETERS = config_parameters(
    MODEL_NAME,
    METADATA,
    Parameter("intra_op_threads", whole(0), 0,
              "torch intra-op threads per instance (0: torch's default)"),
    Parameter("model_file", text, "model.pt", "the TorchScript file in the version folder"),
    Parameter("autocast", one_of("none", "float16", "bfloat16"), "none",
              "run the model under torch.autocast with this dtype (float16 on a GPU); its "
              "float outputs are handed on as FP32, as the contract says"),
)

# Python model name -> what it reads. The ensemble has no model.py.
PYTHON_MODELS: dict[str, ParameterSet] = {
    s.owner: s for s in (PIPELINE_PARAMETERS, MONITORING_PARAMETERS, PREPROCESS_PARAMETERS,
                         POSTPROCESS_PARAMETERS, RUNNER_PARAMETERS)}
assert ENSEMBLE_NAME not in PYTHON_MODELS


# --------------------------------------------------------------------------- requests
# Upper bound on max_detections: the models emit at most 100 per image
# (detectron2's TEST.DETECTIONS_PER_IMAGE, torchvision's box_detections_per_img);
# a larger request is a client bug worth reporting, not a quiet clamp.
MAX_DETECTIONS_LIMIT = 1000
# Upper bound on polygon_tolerance: a coarser outline is not a mask any more.
MAX_POLYGON_TOLERANCE = 100.0

@dataclass(frozen=True)
class RequestOptions:
    """Hold one request's parameters, parsed (REQUEST_PARAMETERS); its defaults are theirs."""

    score_threshold: float
    max_detections: int | None = None
    mask_format: MaskFormat = MaskFormat.RLE
    polygon_tolerance: float = 0.0
    probe: bool = False


REQUEST_PARAMETERS = ParameterSet(PIPELINE_NAME, "parameter", (
    Parameter("score_threshold", number(0.0, 1.0), None,
              "keep detections with score >= this, in [0, 1]; default from the export"),
    Parameter("max_detections", whole(0, MAX_DETECTIONS_LIMIT), RequestOptions.max_detections,
              "keep at most this many (highest scores first); default: all"),
    Parameter("mask_format", one_of(*(f.value for f in MaskFormat)),
              RequestOptions.mask_format.value, "rle (default) | dense | polygon | box | none"),
    Parameter("polygon_tolerance", number(0.0, MAX_POLYGON_TOLERANCE),
              RequestOptions.polygon_tolerance,
              "mask_format=polygon: simplify outlines to within this many pixels "
              "(Douglas-Peucker), in [0, 100]; default 0, exact"),
    Parameter("probe", flag, RequestOptions.probe,
              "true: a health probe (python -m client probe): answered empty by pipeline_bls "
              "itself, no image read, no model call, no monitoring event; refused "
              "UNAVAILABLE while a stub process of pipeline_bls is dead"),
))
