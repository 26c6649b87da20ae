"""Provide the ``triton_python_backend_utils`` API as the double's: what a model.py sees.

Behaviour follows the real stub (python_backend r24.10: src/pb_stub.cc,
src/response_sender.cc, src/infer_request.cc) where a model can tell the difference:
the response sender's rules and error messages, requests unusable once ``execute`` has
returned, BLS refused outside ``execute``. ``InferenceRequest.exec`` hands the request to
the TritonDouble that built the module (bls/testing/double.py).
"""

from __future__ import annotations

import asyncio
import enum
import json
import threading
import weakref
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    from bls.testing.double import TritonDouble

TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITON_STRING_TO_NUMPY = {
    "TYPE_BOOL": bool, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


def _round_trip(double: "TritonDouble | None", kind: str) -> None:
    """Record a call that is a blocking IPC round trip to the backend in the real stub."""
    if double is not None:
        double._round_trip(kind)


class TritonModelException(Exception):
    """Raised, as by the real module, when the API is misused.

    For example a refused send, or BLS outside ``execute``."""


class RequestReleased(TritonModelException):
    """Raised when a request is used after ``execute`` returned.

    Triton has released it by then (TRITONBACKEND_RequestRelease), so its inputs,
    parameters and sender are gone."""


class TritonError(Exception):
    """Carry a response's error, with a TRITONSERVER_Error_Code, as pb_utils.TritonError."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, \
        ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        """The error's message."""
        return self._message

    def code(self) -> int:
        """The error's code (one of the class's constants)."""
        return self._code


def wire_copy(array: np.ndarray) -> np.ndarray:
    """An array as the other side of the backend's shared memory reads it: a copy, and a
    BYTES (object or text) array's elements as ``bytes``, text in UTF-8, as the stub
    deserializes BYTES tensors.

    Raises:
        TypeError: an element the backend cannot serialise as BYTES.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "OUS":
        return array.copy()
    out = np.empty(array.shape, dtype=np.object_)
    for index, value in np.ndenumerate(array):
        if isinstance(value, (bytes, bytearray, np.bytes_)):
            out[index] = bytes(value)
        elif isinstance(value, str):
            out[index] = value.encode()
        else:
            raise TypeError(f"a BYTES tensor element must be bytes or str, got "
                            f"{type(value).__name__}")
    return out


class Tensor:
    """A named tensor, as pb_utils.Tensor; text arrays become object arrays. What a model
    reads from a request or a BLS response crossed the backend: ``wire_copy``."""

    def __init__(self, name: str, array: Any):
        array = np.asarray(array)
        if array.dtype.kind in "US":  # the real backend sends text as BYTES
            array = array.astype(np.object_)
        self._name = name
        self._array = array

    def name(self) -> str:
        """The tensor's name."""
        return self._name

    def as_numpy(self) -> np.ndarray:
        """The tensor's array, not copied."""
        return self._array

    def is_cpu(self) -> bool:
        """True: the double keeps every tensor in host memory."""
        return True

    def to_dlpack(self):
        """A DLPack capsule of the array (of a copy, if it is read-only)."""
        array = self._array if self._array.flags.writeable else self._array.copy()
        return array.__dlpack__()

    def __dlpack__(self, stream=None):
        """The DLPack protocol, as the stub's Tensor: a capsule, as ``to_dlpack``;
        ``stream`` is for a GPU tensor's consumer (the double has none)."""
        return self.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        """(kDLCPU, 0): the double keeps every tensor in host memory."""
        return (1, 0)

    @staticmethod
    def from_dlpack(name: str, tensor) -> "Tensor":
        """Make a Tensor from a DLPack capsule or an object with ``__dlpack__`` and
        ``__dlpack_device__`` (the stub's rule, pb_tensor.cc), through torch, in host memory.

        Raises:
            TritonModelException: an empty name, or neither of those, with the stub's
                messages.
        """
        import torch

        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        is_capsule = type(tensor).__name__ == "PyCapsule"
        if not is_capsule and not (hasattr(tensor, "__dlpack__")
                                   and hasattr(tensor, "__dlpack_device__")):
            raise TritonModelException(
                "Provided tensor is not supported. Tensor must be a DLPack capsule or have "
                "`__dlpack__` and `__dlpack_device__` attributes")
        value = torch.utils.dlpack.from_dlpack(tensor)
        return Tensor(name, value.cpu().numpy())


class PreferredMemory:
    """Where a BLS caller asks for the outputs, as pb_utils.PreferredMemory (not enforced)."""

    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU,
                 preferred_device_id: int = 0):
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceResponse:
    """A response: output tensors, or an error, as pb_utils.InferenceResponse."""

    def __init__(self, output_tensors: list[Tensor] | None = None,
                 error: TritonError | None = None):
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        """The response's output tensors."""
        return self._outputs

    def has_error(self) -> bool:
        """Whether the response carries an error."""
        return self._error is not None

    def error(self) -> TritonError | None:
        """The response's error, or None."""
        return self._error


class InferenceResponseSender:
    """Send a request's responses, with the real sender's rules (response_sender.cc).

    ``responses`` holds what reached the client; ``closed`` turns True when a send with
    the final flag is accepted, *before* the response is serialised, so a send that then
    fails (``TritonDouble.fail_sends``) leaves the sender closed, the exception in
    ``lost`` and the request without its final response. ``decoupled`` is the model's
    transaction policy (``TritonDouble.execute`` sets it from the model's config)."""

    def __init__(self, decoupled: bool = True, request: "InferenceRequest | None" = None,
                 double: "TritonDouble | None" = None):
        self.decoupled = decoupled
        self.responses: list[InferenceResponse] = []
        self.final_sent = False
        self.lost: list[Exception] = []
        self._request, self._double = request, double
        self._sent = 0
        self._closed = False
        self._settled = threading.Event()  # closed and done: final sent, lost or aborted
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """Whether a send with the final flag was accepted."""
        return self._closed

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        """Send ``response`` (None with the final flag alone), as the real sender.

        Raises:
            TritonModelException: the real sender's refusals, with its messages; or the
                failure set by ``TritonDouble.fail_sends``.
        """
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException("Inference Response object must be provided when "
                                       "the response flags is set to zero.")
        _round_trip(self._double, "send")
        self._check_outputs(response)
        self._accept(response, flags)
        failure = self._double._send_failure(response, flags) if self._double else None
        self._deliver(response, flags, failure)
        if failure is not None:
            raise failure

    def _check_outputs(self, response: InferenceResponse | None) -> None:
        """Python 3.12's stub (Triton 2.51) dies when a response sent through a sender
        holds an output the client did not ask for; under 3.11 the output is
        dropped. Refused here on every version, as the crash it would be."""
        asked = self._request._requested_output_names if self._request is not None else []
        if response is None or not asked:
            return
        extra = [t.name() for t in response.output_tensors() if t.name() not in asked]
        if extra:
            raise AssertionError(
                f"response holds outputs {extra} the client did not ask for (it asked for "
                f"{asked}): Python 3.12's stub dies of this; send only the requested outputs")

    def _accept(self, response: InferenceResponse | None, flags: int) -> None:
        """The real UpdateStateAndCounters: refuse, or count and close on the final flag."""
        with self._lock:
            if not self.decoupled and response is not None and self._sent > 0:
                raise TritonModelException("Unable to send response. Non-decoupled model "
                                           "cannot send more than one response.")
            if not self.decoupled and response is None and self._sent == 0:
                raise TritonModelException("Unable to send response. Non-decoupled model "
                                           "cannot send complete final before sending a "
                                           "response.")
            if self._closed:
                raise TritonModelException(
                    "Unable to send response. Response sender has been closed.")
            if flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self._closed = True
            self._sent += 1

    def _deliver(self, response: InferenceResponse | None, flags: int,
                 failure: Exception | None = None) -> None:
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        with self._lock:
            if failure is not None:
                self.lost.append(failure)
            else:
                if response is not None:
                    self.responses.append(response)
                self.final_sent = final  # False until now: nothing is sent after a final
        if final:
            self._settled.set()

    def is_cancelled(self) -> bool:
        """Whether the client cancelled; asks the response factory, so valid after execute."""
        _round_trip(self._double, "is_cancelled")
        return self._request is not None and self._request.cancelled

    def _abort(self, response: InferenceResponse) -> None:
        """The stub's error path: the backend answers ``response`` unless the request
        already had its final response, then the sender is closed for good."""
        with self._lock:
            if not self.final_sent:
                self.responses.append(response)
                self.final_sent = True
            self._closed = True
        self._settled.set()

    def summary(self) -> str:
        """Describe what the client got, for assertion messages."""
        lost = "".join(f"; lost: a send failed with {e!r}" for e in self.lost)
        return (f"{len(self.responses)} response(s), final flag "
                f"{'sent' if self.final_sent else 'not sent'}, "
                f"sender {'closed' if self._closed else 'open'}{lost}")




class InferenceRequest:
    """A request, on both sides of the API, as pb_utils.InferenceRequest.

    Requests the double hands to ``execute`` (unusable once it has returned) and BLS
    requests a model builds (``exec``/``async_exec``)."""

    _double: "TritonDouble | None" = None  # set on the subclass each double installs

    def __init__(self, request_id: str = "", correlation_id: int | str = 0, *,
                 inputs: list[Tensor], requested_output_names: list[str], model_name: str,
                 model_version: int = -1, flags: int = 0, timeout: int = 0,
                 preferred_memory: PreferredMemory | None = None, trace: Any = None,
                 parameters: Mapping[str, Any] | str | None = None):
        """The stub's signature (pb_stub.cc): ``inputs``, ``requested_output_names`` and
        ``model_name`` are required; anything else is a TypeError, as there."""
        for name, value in (("inputs", inputs), ("requested_output_names",
                                                 requested_output_names),
                            ("model_name", model_name)):
            if value is None:
                raise TypeError(f"InferenceRequest(): {name} must not be None")
        self.model_name = model_name
        self._inputs = list(inputs)
        self._requested_output_names = list(requested_output_names)
        self._request_id = request_id
        self.timeout = timeout  # not enforced: Triton does not without dynamic batching
        self.preferred_memory = preferred_memory or PreferredMemory()
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})
        self.sender = InferenceResponseSender(request=self, double=self._double)
        self.cancelled = False
        self.released = False

    def _usable(self, what: str) -> None:
        if self.released:
            raise RequestReleased(
                f"request {self._request_id or hex(id(self))}: {what}() used after execute "
                "returned; Triton releases requests then (keep what you need, or the "
                "response sender, before returning)")

    def inputs(self) -> list[Tensor]:
        """The request's input tensors."""
        self._usable("inputs")
        return self._inputs

    def requested_output_names(self) -> list[str]:
        """The outputs the client asked for; every output of the model when it named none
        (as the server does: ``TritonDouble.execute`` fills them in from the config)."""
        self._usable("requested_output_names")
        return list(self._requested_output_names)

    def parameters(self) -> str:
        """The request's parameters as a JSON object string, as Triton hands them."""
        self._usable("parameters")
        return json.dumps(self._parameters)

    def get_response_sender(self) -> InferenceResponseSender:
        """The request's response sender (it stays valid after the release)."""
        self._usable("get_response_sender")
        return self.sender

    def is_cancelled(self) -> bool:
        """Whether the client cancelled the request."""
        self._usable("is_cancelled")
        _round_trip(self._double, "is_cancelled")
        return self.cancelled

    def request_id(self) -> str:
        """The request's id ("" when the client gave none)."""
        self._usable("request_id")
        return self._request_id

    def exec(self, decoupled: bool = False):
        """Run the BLS call: the routed callable, in the calling thread.

        Returns:
            A response, or for ``decoupled`` an iterator of responses.
        """
        if self._double is None:
            raise TritonModelException("BLS needs the module of an installed TritonDouble")
        _round_trip(self._double, "exec")
        return self._double._route(self, decoupled)

    def async_exec(self, decoupled: bool = False) -> asyncio.Future:
        """Run ``exec`` in the running loop's default executor, as the stub does.

        So it waits for one of the executor's ``executor_threads`` threads.
        """
        return asyncio.get_running_loop().run_in_executor(None, self.exec, decoupled)


KIND_NAMES = ("COUNTER", "GAUGE", "HISTOGRAM")
_FAMILY_DELETED = ("Invalid metric operation as the corresponding 'MetricFamily' has been "
                   "deleted. The 'MetricFamily' object should be deleted AFTER its "
                   "corresponding 'Metric' objects have been deleted.")


class Metric:
    """Hold one metric of a MetricFamily, as pb_utils.Metric, with the stub's rules
    (measured on 2.51): a counter takes ``increment``, a gauge ``increment`` and ``set``, a
    histogram ``observe``. Every other operation is a mistake that can kill tritonserver
    2.51, so the double refuses it with AssertionError: another operation's refusal
    (TritonModelException) aborted tritonserver with a boost lock_exception in 1 of 19
    runs of ``set`` on a counter and 3 of 12 of ``observe``; a negative increment of a
    counter kills it; and an operation once its MetricFamily object was collected, by the
    timing of the collection. ``value()`` for counters and gauges; a histogram keeps its
    observations (``observations``) and ``value()`` is their count."""

    def __init__(self, family: "MetricFamily", labels: dict, buckets: list | None):
        self._family = weakref.ref(family)
        self.name, self.kind, self._double = family.name, family.kind, family._double
        self.labels, self.buckets = dict(labels), buckets
        self._value = 0.0
        self.observations: list[float] = []

    def _operate(self, verb: str, operation: str, allowed: tuple[int, ...]) -> None:
        _round_trip(self._double, "metric")
        if self._family() is None:  # refused, or fatal to tritonserver, by timing (measured)
            raise AssertionError(f"{self.name}: {verb} of a metric whose MetricFamily object "
                                 f"was collected: Triton 2.51 answers '{_FAMILY_DELETED}', or "
                                 "dies of it; keep the family while its metrics are used")
        if self.kind not in allowed:  # refused, or fatal to tritonserver, by chance (measured)
            raise AssertionError(
                f"{self.name}: {verb} of a {KIND_NAMES[self.kind].lower()}: Triton 2.51 "
                f"refuses it ('TRITONSERVER_METRIC_KIND_{KIND_NAMES[self.kind]} does not "
                f"support {operation}') or dies of the refusal (measured); a counter takes "
                "increment, a gauge increment and set, a histogram observe")

    def increment(self, value: float) -> None:
        """Add ``value`` to a counter or a gauge."""
        self._operate("increment", "Increment", (MetricFamily.COUNTER, MetricFamily.GAUGE))
        if self.kind == MetricFamily.COUNTER and value < 0:
            raise AssertionError(f"{self.name}: increment({value}) of a counter: Triton 2.51 "
                                 "dies of it (measured); a counter only goes up")
        self._value += float(value)

    def set(self, value: float) -> None:
        """Set a gauge."""
        self._operate("set", "Set", (MetricFamily.GAUGE,))
        self._value = float(value)

    def observe(self, value: float) -> None:
        """Record an observation of a histogram."""
        self._operate("observe", "Observe", (MetricFamily.HISTOGRAM,))
        self.observations.append(value)

    def value(self) -> float:
        """The counter's or gauge's value, or a histogram's number of observations."""
        if self.kind == MetricFamily.HISTOGRAM:
            return float(len(self.observations))
        return self._value


class Registered:
    """What a double keeps of a metric family, past the family object's life: its name,
    kind and metrics by labels (``TritonDouble.metrics``)."""

    COUNTER, GAUGE, HISTOGRAM = range(3)

    def __init__(self, name: str, kind: int):
        self.name, self.kind = name, kind
        self.metrics: dict[tuple, Metric] = {}


class MetricFamily:
    """Make metrics of one family, as pb_utils.MetricFamily; registered by name in the
    double's ``metrics``. A Metric with the same labels is the same metric, as in the
    server. Keep the family object: its metrics refuse every operation once it is gone."""

    COUNTER, GAUGE, HISTOGRAM = range(3)
    _double: "TritonDouble | None" = None

    def __init__(self, name: str, description: str, kind: int):
        if kind not in (self.COUNTER, self.GAUGE, self.HISTOGRAM):
            raise TritonError(f"unknown metric kind {kind}")
        self.name, self.description, self.kind = name, description, kind
        registered = (self._double.metrics.setdefault(name, Registered(name, kind))
                      if self._double is not None else Registered(name, kind))
        self.metrics = registered.metrics  # same name: same metrics

    def Metric(self, labels: dict | None = None, buckets: list | None = None) -> Metric:
        """The family's metric with these labels (made on first use); buckets for histograms."""
        if (buckets is not None) != (self.kind == self.HISTOGRAM):
            raise TritonError(f"{self.name}: buckets are required for, and only for, "
                              "histograms")
        key = tuple(sorted((labels or {}).items()))
        if key not in self.metrics or self.metrics[key]._family() is None:
            self.metrics[key] = Metric(self, labels or {}, buckets)
        return self.metrics[key]


class LogLevel(enum.Enum):
    """pb_utils.Logger.LogLevel (pb_stub.cc): the levels Logger.log takes."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Log as pb_utils.Logger: ``log(message, level=Logger.LogLevel.INFO)`` and the
    shorthands ``log_info``, ``log_warn``, ``log_error``, ``log_verbose``. Each double
    installs a Logger of its own: its messages land in ``messages`` as (LogLevel, text)
    (``TritonDouble.logged``). A level that is not a LogLevel is refused with TypeError,
    as the stub's binding refuses it."""

    LogLevel = LogLevel
    messages: list[tuple[LogLevel, str]] = []  # the module's own, outside any double

    @classmethod
    def log(cls, message: str, level: LogLevel = LogLevel.INFO) -> None:
        """Keep ``message`` at ``level``."""
        if not isinstance(message, str) or not isinstance(level, LogLevel):
            raise TypeError(f"log(): incompatible function arguments; expected (message: str, "
                            f"level: LogLevel), got ({type(message).__name__}, "
                            f"{type(level).__name__})")
        cls.messages.append((level, message))

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.log(message, LogLevel.INFO)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.log(message, LogLevel.WARNING)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.log(message, LogLevel.ERROR)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.log(message, LogLevel.VERBOSE)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    """Find the request's input named ``name``; None if it has none."""
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    """Find a response's output tensor by its name, or None."""
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    """Find an input's entry in the model config; None if absent."""
    return next((c for c in model_config.get("input", []) if c["name"] == name), None)


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    """The model config's output entry called ``name``, or None."""
    return next((c for c in model_config.get("output", []) if c["name"] == name), None)


def triton_string_to_numpy(triton_type_string: str):
    """Map a config data_type to its numpy type; KeyError for others, as the real one."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    """Whether the model config declares the decoupled transaction policy."""
    if "model_transaction_policy" in model_config:
        return bool(model_config["model_transaction_policy"].get("decoupled", False))
    return False
