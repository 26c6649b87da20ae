"""A test double for ``triton_python_backend_utils``, to unit-test a model.py.

It provides the parts of the Python backend API the models use (Tensor, InferenceRequest
with exec/async_exec, InferenceResponse, TritonError with codes, PreferredMemory,
response senders for decoupled models, MetricFamily with counters, gauges and
histograms, Logger) and routes BLS calls to in-process callables. It is for logic; the integration tests run the real server.

    double = TritonDouble(models={"mask_rcnn": lambda inputs, params: {...}})
    with double.installed():
        model = double.load_model(repo / "pipeline_bls")      # initialize() has run
        responses = double.execute(model, [double.request({"image": array}, {"mask_format": "dense"})])

A routed callable takes (inputs: dict name -> ndarray, parameters: dict) and returns
dict name -> ndarray; an exception it raises becomes the BLS response's error.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

ModelCallable = Callable[[dict, dict], Mapping[str, np.ndarray]]
MODULE_NAME = "triton_python_backend_utils"

TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonError(Exception):
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


class ResponseSender:
    """Collects what a decoupled model sends; ``closed`` after the final flag."""

    def __init__(self):
        self.responses: list[InferenceResponse] = []
        self.closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.closed:
            raise TritonError("response sender already closed", TritonError.INTERNAL)
        if response is not None:
            self.responses.append(response)
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.closed = True


class InferenceRequest:
    """Both sides of the API: requests the double hands to ``execute`` and BLS requests a
    model builds (``exec``/``async_exec`` run the routed callable)."""

    _double: "TritonDouble | None" = None  # set on the class the double installs

    def __init__(self, model_name: str = "", inputs: list[Tensor] | None = None,
                 requested_output_names: list[str] | None = None, timeout: int = 0,
                 preferred_memory: PreferredMemory | None = None,
                 parameters: Mapping[str, Any] | str | None = None, **_ignored):
        self.model_name = model_name
        self._inputs = list(inputs or [])
        self.requested_output_names = list(requested_output_names or [])
        self.timeout = timeout
        self.preferred_memory = preferred_memory
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})
        self.sender = ResponseSender()
        self.cancelled = False

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def is_cancelled(self) -> bool:
        return self.cancelled

    def request_id(self) -> str:
        return ""

    def exec(self, decoupled: bool = False):
        response = self._double._route(self)
        return iter([response]) if decoupled else response

    async def async_exec(self, decoupled: bool = False):
        return self.exec(decoupled)


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


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


class Logger:
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


def model_config_dict(config_path: Path) -> dict:
    """A config.pbtxt as the JSON dict Triton hands to ``initialize``."""
    config = text_format.Parse(Path(config_path).read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


class TritonDouble:
    """The fake ``triton_python_backend_utils`` module, its BLS routes and a record of
    the BLS requests made (``calls``)."""

    def __init__(self, models: Mapping[str, ModelCallable] | None = None):
        self.models: dict[str, ModelCallable] = dict(models or {})
        self.calls: list[InferenceRequest] = []
        self.metrics: dict[str, MetricFamily] = {}
        self.module = self._build_module()

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType(MODULE_NAME)
        request_class = type("InferenceRequest", (InferenceRequest,), {"_double": self})
        family_class = type("MetricFamily", (MetricFamily,), {"_double": self})
        for name, value in dict(
            Tensor=Tensor, InferenceRequest=request_class, InferenceResponse=InferenceResponse,
            TritonError=TritonError, PreferredMemory=PreferredMemory, Logger=Logger,
            MetricFamily=family_class,
            get_input_tensor_by_name=get_input_tensor_by_name,
            get_output_tensor_by_name=get_output_tensor_by_name,
            TRITONSERVER_MEMORY_CPU=TRITONSERVER_MEMORY_CPU,
            TRITONSERVER_MEMORY_CPU_PINNED=TRITONSERVER_MEMORY_CPU_PINNED,
            TRITONSERVER_MEMORY_GPU=TRITONSERVER_MEMORY_GPU,
            TRITONSERVER_RESPONSE_COMPLETE_FINAL=TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        ).items():
            setattr(module, name, value)
        return module

    def _route(self, request: InferenceRequest) -> InferenceResponse:
        self.calls.append(request)
        model = self.models.get(request.model_name)
        if model is None:
            return InferenceResponse(error=TritonError(
                f"Failed for execute the inference request. Model '{request.model_name}' "
                "is not ready.", TritonError.UNAVAILABLE))
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        try:
            outputs = model(inputs, request._parameters)
        except Exception as e:
            return InferenceResponse(error=TritonError(str(e), TritonError.INTERNAL))
        names = request.requested_output_names or list(outputs)
        missing = [n for n in names if n not in outputs]
        if missing:
            return InferenceResponse(error=TritonError(
                f"{request.model_name} has no outputs {missing}", TritonError.INVALID_ARG))
        return InferenceResponse([Tensor(n, outputs[n]) for n in names])

    @contextmanager
    def installed(self):
        """Make ``import triton_python_backend_utils`` give this double."""
        previous = sys.modules.get(MODULE_NAME)
        sys.modules[MODULE_NAME] = self.module
        try:
            yield self
        finally:
            if previous is None:
                sys.modules.pop(MODULE_NAME, None)
            else:
                sys.modules[MODULE_NAME] = previous

    def request(self, inputs: Mapping[str, Any], parameters: Mapping[str, Any] | None = None
                ) -> InferenceRequest:
        """A request as ``execute`` receives it."""
        return self.module.InferenceRequest(
            inputs=[Tensor(k, v) for k, v in inputs.items()], parameters=parameters)

    def load_model(self, model_dir: Path, config: dict | None = None, version: str = "1",
                   instance_kind: str = "CPU"):
        """Import ``model_dir/<version>/model.py`` (its folder first on sys.path, as the
        stub does) and run ``initialize`` with the args Triton passes."""
        model_dir = Path(model_dir)
        config = config or model_config_dict(model_dir / "config.pbtxt")
        version_dir = model_dir / version
        spec = importlib.util.spec_from_file_location(
            f"_model_{config['name']}_{id(self)}", version_dir / "model.py")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(version_dir))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(version_dir))
        model = module.TritonPythonModel()
        # Read by execute(): a non-decoupled model that returns None must have sent one
        # final response per request through its senders, as the real stub insists.
        model._double_decoupled = bool(
            config.get("model_transaction_policy", {}).get("decoupled", False))
        model.initialize({
            "model_config": json.dumps(config), "model_name": config["name"],
            "model_repository": str(model_dir), "model_version": version,
            "model_instance_kind": instance_kind, "model_instance_device_id": "0",
            "model_instance_name": f"{config['name']}_0",
        })
        return model

    def metric(self, family: str, **labels) -> float:
        """The value of a metric the model created (0 if it never was)."""
        found = self.metrics.get(family)
        metric = found.metrics.get(tuple(sorted(labels.items()))) if found else None
        return metric.value() if metric else 0.0

    @staticmethod
    def execute(model, requests: list[InferenceRequest]) -> list[InferenceResponse] | None:
        """Run ``execute`` (plain or ``async def``) as the stub would. Tasks an async
        execute leaves running (fire-and-forget BLS calls, requests answered by their
        response senders) are run to completion before this returns, as the stub's
        long-lived event loop would run them.

        Returns the responses execute returned; for a non-decoupled model whose execute
        returned None, the one response each request's sender got (checked: exactly one,
        with the final flag); None for a decoupled model (read its senders)."""
        result = model.execute(requests)
        if inspect.isawaitable(result):
            async def run_all(awaitable):
                answer = await awaitable
                while True:  # until quiet: a finished task may have started another
                    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                    if not others:
                        return answer
                    await asyncio.gather(*others, return_exceptions=True)
            result = asyncio.run(run_all(result))
        if result is None and not getattr(model, "_double_decoupled", True):
            for i, request in enumerate(requests):
                sent = request.sender.responses
                if len(sent) != 1 or not request.sender.closed:
                    raise AssertionError(
                        f"request {i}: a non-decoupled model must send exactly one response "
                        f"with the final flag; sent {len(sent)}, final={request.sender.closed}")
            result = [request.sender.responses[0] for request in requests]
        if result is not None and len(result) != len(requests):
            raise AssertionError(f"execute answered {len(result)} responses "
                                 f"for {len(requests)} requests")
        return result
