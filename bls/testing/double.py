"""Run a model.py's TritonPythonModel as the Python backend stub would (``TritonDouble``).

BLS calls are routed to in-process callables. See bls/testing/README.md."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import sysconfig
import threading
import time
import traceback
import types
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from bls.testing import api
from bls.testing.api import (TRITONSERVER_RESPONSE_COMPLETE_FINAL, InferenceRequest,
                             InferenceResponse, TritonError, TritonModelException,
                             using_decoupled_model_transaction_policy)

MODULE_NAME = "triton_python_backend_utils"
# (inputs by name, parameters) -> outputs by name; for a decoupled BLS call also a list
# or iterator of such dicts, one response each.
ModelCallable = Callable[[dict, dict], Any]
SendFailure = Callable[[InferenceResponse | None, int], bool]
MODULE_NAMES = [
    "Tensor", "InferenceResponse", "TritonError", "TritonModelException", "PreferredMemory",
    "Logger", "get_input_tensor_by_name", "get_output_tensor_by_name",
    "get_input_config_by_name", "get_output_config_by_name", "triton_string_to_numpy",
    "using_decoupled_model_transaction_policy", "TRITON_STRING_TO_NUMPY",
    "TRITONSERVER_MEMORY_CPU", "TRITONSERVER_MEMORY_CPU_PINNED", "TRITONSERVER_MEMORY_GPU",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
]


def stub_error_text(error: BaseException) -> str:
    """An exception as the stub reports one that escaped ``execute`` (pybind11's text):
    "<Type>: <message>", then "At:" and the model's frames, deepest first."""
    skipped = (str(Path(__file__).parent), sysconfig.get_paths()["stdlib"])
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(skipped)]
    where = "".join(f"  {f.filename}({f.lineno}): {f.name}\n" for f in reversed(frames))
    return f"{type(error).__name__}: {error}" + (f"\n\nAt:\n{where}" if where else "")


def model_config_dict(config_path: Path) -> dict:
    """Read a config.pbtxt as the JSON dict Triton hands to ``initialize``."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(Path(config_path).read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


class TritonDouble:
    """Stand in for the Python backend stub and its ``triton_python_backend_utils`` module.

    It holds the fake module (``module``), its BLS routes (``models``), the BLS requests
    made (``calls``) and the metrics created (``metrics``). Like the stub, it runs every
    ``async def execute`` on one event loop that lives in a daemon thread until
    ``close()``; that loop's default executor, which ``async_exec`` uses, has
    ``executor_threads`` threads (Python's default count unless given).

    Args:
        models: BLS routes: model name -> ModelCallable.
        executor_threads: threads of the event loop's default executor.
    """

    def __init__(self, models: Mapping[str, ModelCallable] | None = None,
                 executor_threads: int | None = None):
        self.models: dict[str, ModelCallable] = dict(models or {})
        self.calls: list[InferenceRequest] = []
        self.metrics: dict[str, api.Registered] = {}  # metric families by name
        # (kind, thread name) of every call that is a blocking IPC round trip to the
        # backend in the real stub: send, is_cancelled, exec, metric.
        self.round_trips: list[tuple[str, str]] = []
        self.executor_threads = executor_threads or min(32, (os.cpu_count() or 1) + 4)
        self.module = self._build_module()
        self._configs: dict[int, tuple[Any, dict]] = {}  # id(model) -> (model, config)
        self._phase = "execute"  # "initialize" or "finalize": BLS is refused
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failing: list | None = None  # [count or predicate, exception]
        self._lock = threading.Lock()

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType(MODULE_NAME)
        for name in MODULE_NAMES:
            setattr(module, name, getattr(api, name))
        module.InferenceRequest = type("InferenceRequest", (InferenceRequest,),
                                       {"_double": self})
        module.MetricFamily = type("MetricFamily", (api.MetricFamily,), {"_double": self})
        module.Logger = type("Logger", (api.Logger,), {"messages": []})  # this double's own
        return module

    @property
    def logged(self) -> list[tuple[api.LogLevel, str]]:
        """What the models logged through this double's Logger: (LogLevel, message)."""
        return self.module.Logger.messages

    @contextmanager
    def installed(self):
        """Make ``import triton_python_backend_utils`` give this double; ``close()`` on
        the way out."""
        previous = sys.modules.get(MODULE_NAME)
        sys.modules[MODULE_NAME] = self.module
        try:
            yield self
        finally:
            if previous is None:
                sys.modules.pop(MODULE_NAME, None)
            else:
                sys.modules[MODULE_NAME] = previous
            self.close()

    # ------------------------------------------------------------------ model lifecycle
    def load_model(self, model_dir: Path, config: dict | None = None, version: str = "1",
                   instance_kind: str = "CPU", device_id: int = 0):
        """Import ``model_dir/<version>/model.py`` and ``initialize`` its TritonPythonModel.

        Its folder goes first on sys.path during the import, as the stub does.

        Args:
            model_dir: the model's directory in a repository.
            config: the model config as a dict (default: ``model_dir/config.pbtxt``).
            version: the version folder.
            instance_kind: ``model_instance_kind`` in ``initialize``'s args.
            device_id: ``model_instance_device_id`` there (the instance's GPU).

        Returns:
            The initialized model.
        """
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
        return self.initialize(module.TritonPythonModel(), config, model_dir, version,
                               instance_kind, device_id)

    def initialize(self, model, config: dict, model_dir: Path | None = None,
                   version: str = "1", instance_kind: str = "CPU", device_id: int = 0):
        """Register ``model`` with its config and call its ``initialize`` as Triton does.

        ``model`` is any TritonPythonModel-like object; ``execute`` uses its config's
        ``name`` and decoupled policy. BLS raises during ``initialize``, as in the stub.

        Returns:
            ``model``.
        """
        self._configs[id(model)] = (model, config)
        if hasattr(model, "initialize"):
            previous, self._phase = self._phase, "initialize"
            try:
                model.initialize({
                    "model_config": json.dumps(config), "model_name": config["name"],
                    "model_repository": str(model_dir or ""), "model_version": version,
                    "model_instance_kind": instance_kind,
                    "model_instance_device_id": str(device_id),
                    "model_instance_name": self._instance_name(config),
                })
            finally:
                self._phase = previous
        return model

    def execute(self, model, requests: list[InferenceRequest], timeout: float = 30.0
                ) -> list[InferenceResponse] | None:
        """Run the model's ``execute`` on ``requests`` as the stub would.

        A plain ``execute`` runs in this thread; an ``async def`` one on the double's
        loop, waited for unless the model is decoupled. The requests are released when it
        returns. If it raises (or returns what the stub refuses), every request not yet
        answered gets the stub's INTERNAL error and all senders close.

        Args:
            model: a model set up by ``load_model`` or ``initialize``.
            requests: requests made by ``request``.
            timeout: seconds to wait for the responses (non-decoupled).

        Returns:
            Non-decoupled: each request's one response, after waiting up to ``timeout``
            s for every sender to close. Decoupled: None at once; read
            ``request.sender`` (``wait_closed`` waits for them).

        Raises:
            AssertionError: a request without exactly one response with the final flag
                (naming the request and what it got), or what the real server would die
                of.
        """
        model_config = self._config_of(model)
        name = self._instance_name(model_config)
        decoupled = using_decoupled_model_transaction_policy(model_config)
        if self._phase == "finalize":
            raise RuntimeError(f"double.execute({name}) after double.finalize: the stub "
                               "has stopped its event loop and executes nothing more")
        outputs = [o["name"] for o in model_config.get("output", [])]
        for request in requests:
            request.sender.decoupled = decoupled
            if not request._requested_output_names:  # none named: the server lists all
                request._requested_output_names = list(outputs)
        future = None
        try:
            result = model.execute(requests)
            if asyncio.iscoroutine(result):
                future = asyncio.run_coroutine_threadsafe(result, self._event_loop())
                if decoupled:  # the stub does not wait; the requests go when it ends
                    future.add_done_callback(lambda f: self._background_done(requests, f))
                    return None
                result = future.result(timeout)
            error = self._take_returned(name, decoupled, requests, result)
        except Exception as e:
            if future is not None and not future.done():  # the stub would wait forever
                raise AssertionError(f"{name}: async execute still running after "
                                     f"{timeout} s") from None
            error = stub_error_text(e)
        self.release(requests)
        if error is not None:
            self.module.Logger.log_error(error)
            if not decoupled and any(r.sender.closed for r in requests):
                raise AssertionError(
                    f"{name}: execute raised ({error}) after a request of its batch had sent "
                    "its final response: the backend then deletes that response factory a "
                    "second time and Triton 2.51 dies of a segmentation fault (measured). "
                    "Catch errors per request inside execute.")
            for request in requests:
                request.sender._abort(InferenceResponse(error=TritonError(
                    f"Failed to process the request(s) for model '{name}', message: {error}",
                    TritonError.INTERNAL)))
        if decoupled:
            return None
        self.wait_closed(requests, timeout)
        wrong = [f"request {i}: {r.sender.summary()}" for i, r in enumerate(requests)
                 if not r.sender.final_sent or len(r.sender.responses) != 1]
        if wrong:
            raise AssertionError("a non-decoupled model must send each request exactly one "
                                 "response with the final flag; " + "; ".join(wrong))
        return [request.sender.responses[0] for request in requests]

    def finalize(self, model) -> None:
        """Finalize ``model`` as the stub's Finalize does.

        BLS raises from now on, the event loop stops first (tasks left on it stay where
        they are), then ``model.finalize()`` runs if it has one. The double executes
        nothing afterwards."""
        self._phase = "finalize"
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if hasattr(model, "finalize"):
            model.finalize()

    def close(self) -> None:
        """Cancel what runs on the event loop, and stop its thread and the executor.

        Threads blocked in a routed callable finish when it returns."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._thread.is_alive():
            def cancel_all_then_stop():
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.call_soon(loop.stop)
            loop.call_soon_threadsafe(cancel_all_then_stop)
            self._thread.join(5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            loop.close()

    # ------------------------------------------------------------------ test controls
    def request(self, inputs: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
                request_id: str = "", requested_output_names: list[str] | None = None
                ) -> InferenceRequest:
        """Make a request as ``execute`` receives it.

        Args:
            inputs: arrays by input name, as they reach the model: copies, BYTES
                elements as bytes (text in UTF-8).
            parameters: the request's parameters.
            request_id: the request's id.
            requested_output_names: the outputs the client asked for (None: it named none,
                and ``execute`` fills in every output of the model, as the server does).
        """
        return self.module.InferenceRequest(
            request_id, inputs=[api.Tensor(k, api.wire_copy(v)) for k, v in inputs.items()],
            requested_output_names=list(requested_output_names or []), model_name="",
            parameters=parameters)

    @staticmethod
    def cancel(request: InferenceRequest) -> None:
        """Cancel as the client would: ``request.is_cancelled()`` and its sender's turn True."""
        request.cancelled = True

    def fail_sends(self, which: int | SendFailure,
                   exception: Exception | None = None) -> None:
        """Make sends fail while serialising the response, as a real send can.

        As a real send does after it has closed the sender: ``exception`` is raised, the
        response is lost. ``fail_sends(0)`` stops it.

        Args:
            which: the number of next sends to fail, or a predicate
                ``which(response, flags)`` choosing them.
            exception: what they raise (a TritonModelException by default).
        """
        self._failing = [which, exception or TritonModelException(
            "the response could not be serialised (TritonDouble.fail_sends)")]

    def wait_closed(self, requests: list[InferenceRequest], timeout: float = 30.0) -> None:
        """Wait until every request's sender is closed and done sending.

        Raises:
            AssertionError: naming those still open after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        still_open = [f"request {i}: {r.sender.summary()}" for i, r in enumerate(requests)
                      if not r.sender._settled.wait(max(0.0, deadline - time.monotonic()))]
        if still_open:
            raise AssertionError(f"senders not closed after {timeout} s: "
                                 + "; ".join(still_open))

    def metric(self, family: str, **labels) -> float:
        """Read the value of a metric the model created (0 if it never was)."""
        found = self.metrics.get(family)
        metric = found.metrics.get(tuple(sorted(labels.items()))) if found else None
        return metric.value() if metric else 0.0

    # ------------------------------------------------------------------ internals
    def _round_trip(self, kind: str) -> None:
        with self._lock:
            self.round_trips.append((kind, threading.current_thread().name))

    def _config_of(self, model) -> dict:
        entry = self._configs.get(id(model))
        if entry is None:
            raise ValueError(f"{type(model).__name__} {model!r} was not set up by this double:"
                             " use double.load_model(model_dir) or "
                             "double.initialize(model, config)")
        return entry[1]

    @staticmethod
    def _instance_name(config: dict) -> str:
        """Triton's name for the first instance: <model>_0_0 when the config has instance
        groups, <model>_0 when it has none (measured on 2.51)."""
        return f"{config['name']}_0_0" if config.get("instance_group") else f"{config['name']}_0"

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The stub's loop, made on first use: run_forever in a daemon thread."""
        if self._loop is None:
            self._executor = ThreadPoolExecutor(self.executor_threads,
                                                thread_name_prefix="asyncio")
            self._loop = asyncio.new_event_loop()
            self._loop.set_default_executor(self._executor)
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                            name="triton-double-event-loop")
            self._thread.start()
        return self._loop

    @staticmethod
    def _take_returned(name: str, decoupled: bool, requests: list, result) -> str | None:
        """The stub's ProcessReturnedResponses: the error it reports, or None once every
        returned response is sent as its request's final one."""
        if result is None:
            return None
        if decoupled:
            return (f"Python model '{name}' is using the decoupled mode and the execute "
                    "function must return None.")
        if not isinstance(result, list):
            return f"Expected a list in the execute return, found type '{type(result)}'."
        if len(result) != len(requests):
            return ("Number of InferenceResponse objects do not match the number of "
                    f"InferenceRequest objects. InferenceRequest(s) size is:{len(requests)}, "
                    f"and InferenceResponse(s) size is:{len(result)}")
        answered = [(r.sender, response) for r, response in zip(requests, result)
                    if response is not None]
        for sender, response in answered:
            if not isinstance(response, InferenceResponse):
                return ("Expected an 'InferenceResponse' object in the execute function "
                        f"return list, found type '{type(response)}'.")
            try:
                sender._accept(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except TritonModelException as e:
                return str(e)
        for sender, response in answered:
            sender._deliver(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    @staticmethod
    def release(requests: list[InferenceRequest]) -> None:
        """Mark requests released, as Triton does when execute returns (for tests that
        call a model's execute directly)."""
        for request in requests:
            request.released = True

    def _background_done(self, requests: list[InferenceRequest], future: Future) -> None:
        """A decoupled async execute has ended: its requests go; an exception is only
        logged, as the stub does, and the requests it left open stay open."""
        self.release(requests)
        if not future.cancelled() and future.exception() is not None:
            self.module.Logger.log_error(
                "".join(traceback.format_exception(future.exception())))

    def _send_failure(self, response: InferenceResponse | None, flags: int
                      ) -> Exception | None:
        with self._lock:
            if self._failing is None:
                return None
            which, exception = self._failing
            if callable(which):
                return exception if which(response, flags) else None
            if which <= 0:
                return None
            self._failing[0] -= 1
            return exception

    def _route(self, request: InferenceRequest, decoupled: bool):
        """A BLS call: a response, or an iterator of them for ``decoupled``."""
        if self._phase != "execute":
            raise TritonModelException("BLS is only supported during the 'execute' function.")
        self.calls.append(request)
        try:
            route = self.models.get(request.model_name)
            if route is None:
                raise LookupError(f"Model {request.model_name} - Error when running inference: "
                                  "Failed for execute the inference request. Model "
                                  f"'{request.model_name}' is not ready.")
            outputs = route({t.name(): api.wire_copy(t.as_numpy()) for t in request._inputs},
                            request._parameters)
        except Exception as e:
            outputs = e
        if not decoupled:
            return self._response(request, outputs)
        if isinstance(outputs, (Mapping, Exception)):
            return iter([self._response(request, outputs)])
        return self._stream(request, outputs)

    def _stream(self, request: InferenceRequest, outputs) -> Iterator[InferenceResponse]:
        """One response per output dict, then the final flag alone (an empty response,
        as the real iterator yields); an exception ends it with an error response."""
        try:
            for each in outputs:
                yield self._response(request, each)
        except Exception as e:
            yield self._response(request, e)
            return
        yield InferenceResponse()

    @staticmethod
    def _response(request: InferenceRequest, outputs) -> InferenceResponse:
        """Outputs (or the exception raised instead, as an INTERNAL error, as the real
        server reports BLS failures) as the response the BLS caller gets."""
        if isinstance(outputs, Exception):
            return InferenceResponse(error=TritonError(str(outputs), TritonError.INTERNAL))
        names = request.requested_output_names() or list(outputs)
        missing = [n for n in names if n not in outputs]
        if missing:
            return InferenceResponse(error=TritonError(
                f"{request.model_name} has no outputs {missing}", TritonError.INVALID_ARG))
        return InferenceResponse([api.Tensor(n, api.wire_copy(outputs[n])) for n in names])
