"""The ``triton_python_backend_utils`` API as the double provides it: what a model.py sees.

Behaviour follows the real stub (python_backend r24.10: src/pb_stub.cc,
src/response_sender.cc, src/infer_request.cc) where a model can tell the difference:
the response sender's rules and error messages, requests unusable once ``execute`` has
returned, BLS refused outside ``execute``. ``InferenceRequest.exec`` hands the request to
the TritonDouble that built the module (bls/testing/double.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
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


class TritonModelException(Exception):
    """What the real module raises when the API is misused (a refused send, BLS outside
    ``execute``)."""


class RequestReleased(TritonModelException):
    """A request used after ``execute`` returned: Triton has released it by then
    (TRITONBACKEND_RequestRelease), so its inputs, parameters and sender are gone."""


class TritonError(Exception):
    """pb_utils.TritonError: a response's error, with a TRITONSERVER_Error_Code."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, \
        ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: Any):
        array = np.asarray(array)
        if array.dtype.kind in "US":  # the real backend sends text as BYTES
            array = array.astype(np.object_)
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self):
        array = self._array if self._array.flags.writeable else self._array.copy()
        return array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule) -> "Tensor":
        import torch

        return Tensor(name, torch.utils.dlpack.from_dlpack(capsule).numpy())


class PreferredMemory:
    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU,
                 preferred_device_id: int = 0):
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None,
                 error: TritonError | None = None):
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class InferenceResponseSender:
    """A request's response sender, with the real one's rules (response_sender.cc).

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
        return self._closed

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException("Inference Response object must be provided when "
                                       "the response flags is set to zero.")
        self._check_outputs(response)
        self._accept(response, flags)
        failure = self._double._send_failure(response, flags) if self._double else None
        self._deliver(response, flags, failure)
        if failure is not None:
            raise failure

    def _check_outputs(self, response: InferenceResponse | None) -> None:
        """Python 3.12's stub (Triton 2.51) dies when a response sent through a sender
        holds an output the client did not ask for (measured); under 3.11 the output is
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
        """Asks the response factory, so it still answers after execute returned."""
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
        """What the client got, for assertion messages."""
        lost = "".join(f"; lost: a send failed with {e!r}" for e in self.lost)
        return (f"{len(self.responses)} response(s), final flag "
                f"{'sent' if self.final_sent else 'not sent'}, "
                f"sender {'closed' if self._closed else 'open'}{lost}")




class InferenceRequest:
    """Both sides of the API: requests the double hands to ``execute`` (unusable once it
    has returned) and BLS requests a model builds (``exec``/``async_exec``)."""

    _double: "TritonDouble | None" = None  # set on the subclass each double installs

    def __init__(self, model_name: str = "", inputs: list[Tensor] | None = None,
                 requested_output_names: list[str] | None = None, request_id: str = "",
                 timeout: int = 0, preferred_memory: PreferredMemory | None = None,
                 parameters: Mapping[str, Any] | str | None = None, **_ignored):
        self.model_name = model_name
        self._inputs = list(inputs or [])
        self._requested_output_names = list(requested_output_names or [])
        self._request_id = request_id
        self.timeout = timeout  # not enforced: Triton does not without dynamic batching
        self.preferred_memory = preferred_memory
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
        self._usable("inputs")
        return self._inputs

    def requested_output_names(self) -> list[str]:
        """The outputs the client asked for; empty when it named none (the real server
        then lists every output of the model)."""
        self._usable("requested_output_names")
        return list(self._requested_output_names)

    def parameters(self) -> str:
        self._usable("parameters")
        return json.dumps(self._parameters)

    def get_response_sender(self) -> InferenceResponseSender:
        self._usable("get_response_sender")
        return self.sender

    def is_cancelled(self) -> bool:
        self._usable("is_cancelled")
        return self.cancelled

    def request_id(self) -> str:
        self._usable("request_id")
        return self._request_id

    def exec(self, decoupled: bool = False):
        """Runs the routed callable in the calling thread: a response, or for
        ``decoupled`` an iterator of responses."""
        if self._double is None:
            raise TritonModelException("BLS needs the module of an installed TritonDouble")
        return self._double._route(self, decoupled)

    def async_exec(self, decoupled: bool = False) -> asyncio.Future:
        """As the stub: ``exec`` in the running loop's default executor, so it waits for
        one of its ``executor_threads`` threads."""
        return asyncio.get_running_loop().run_in_executor(None, self.exec, decoupled)


class Metric:
    """A metric of a MetricFamily: ``value()`` for counters and gauges; a histogram
    keeps its observations (``observations``) and ``value()`` is their count."""

    def __init__(self, family: "MetricFamily", labels: dict, buckets: list | None):
        self.family, self.labels, self.buckets = family, dict(labels), buckets
        self._value = 0.0
        self.observations: list[float] = []

    def increment(self, value: float) -> None:
        if self.family.kind != MetricFamily.COUNTER:
            raise TritonError(f"{self.family.name}: increment on a non-counter")
        if value < 0:
            raise TritonError(f"{self.family.name}: counters only go up, got {value}")
        self._value += value

    def set(self, value: float) -> None:
        if self.family.kind != MetricFamily.GAUGE:
            raise TritonError(f"{self.family.name}: set on a non-gauge")
        self._value = value

    def observe(self, value: float) -> None:
        if self.family.kind != MetricFamily.HISTOGRAM:
            raise TritonError(f"{self.family.name}: observe on a non-histogram")
        self.observations.append(value)

    def value(self) -> float:
        if self.family.kind == MetricFamily.HISTOGRAM:
            return float(len(self.observations))
        return self._value


class MetricFamily:
    """pb_utils.MetricFamily: families by name in the double's ``metrics`` registry;
    a Metric with the same labels is the same metric, as in the server."""

    COUNTER, GAUGE, HISTOGRAM = range(3)
    _double: "TritonDouble | None" = None

    def __init__(self, name: str, description: str, kind: int):
        if kind not in (self.COUNTER, self.GAUGE, self.HISTOGRAM):
            raise TritonError(f"unknown metric kind {kind}")
        self.name, self.description, self.kind = name, description, kind
        self.metrics: dict[tuple, Metric] = {}
        if self._double is not None:
            existing = self._double.metrics.get(name)
            if existing is not None:
                self.metrics = existing.metrics  # same name: same metrics
            self._double.metrics[name] = self

    def Metric(self, labels: dict | None = None, buckets: list | None = None) -> Metric:
        if (buckets is not None) != (self.kind == self.HISTOGRAM):
            raise TritonError(f"{self.name}: buckets are required for, and only for, "
                              "histograms")
        key = tuple(sorted((labels or {}).items()))
        if key not in self.metrics:
            self.metrics[key] = Metric(self, labels or {}, buckets)
        return self.metrics[key]


class Logger:
    """pb_utils.Logger; every message lands in ``Logger.messages`` as (level, text)."""

    messages: list[tuple[str, str]] = []

    @classmethod
    def log_info(cls, msg):
        cls.messages.append(("info", msg))

    @classmethod
    def log_warn(cls, msg):
        cls.messages.append(("warn", msg))

    @classmethod
    def log_error(cls, msg):
        cls.messages.append(("error", msg))

    @classmethod
    def log_verbose(cls, msg):
        cls.messages.append(("verbose", msg))


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    return next((c for c in model_config.get("input", []) if c["name"] == name), None)


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    return next((c for c in model_config.get("output", []) if c["name"] == name), None)


def triton_string_to_numpy(triton_type_string: str):
    """numpy type of a config data_type; KeyError for others, as the real one."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    if "model_transaction_policy" in model_config:
        return bool(model_config["model_transaction_policy"].get("decoupled", False))
    return False
