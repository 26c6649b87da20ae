"""pipeline_bls: encoded image -> detections, calling mask_rcnn through BLS.

A thin adapter over bls/: prepare (decode, resize) and finish (rescale, paste, encode)
run in worker threads, the model call is an async BLS request. Each request is answered
on its own, by its response sender, as soon as it is ready: a bad one gets an INVALID_ARG
error naming the input, its neighbours their detections, and a small image does not wait
for a large one batched with it. execute returns once its requests are started, so the
next batch is decoded while this one is in mask_rcnn (the ensemble pipelines its steps
across models the same way); max_in_flight_requests bounds what one instance holds, and
beyond it requests wait in Triton's queue.

When the monitoring policy (bls/policy.py) picks an answered request, an event goes to
the decoupled monitoring model in a background task that the answer never waits for;
what became of it is counted (pipeline_monitoring_calls_total{outcome}). Requests are
counted by outcome and timed by stage (bls/metrics.py): Triton's own statistics for this
model end when execute returns.
"""

import asyncio
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

from bls import config as cfg
from bls.contract import (MODEL_INPUT, MODEL_NAME, MONITORING_NAME, MONITORING_OUTPUT,
                          PIPELINE_INPUT, PIPELINE_NAME)
from bls.errors import Cancelled
from bls.metadata import ModelMetadata
from bls.metrics import RequestMetrics
from bls.pipeline import finish, prepare
from bls.policy import POLICY_PARAMETER, MonitoringCalls, MonitoringPolicy, event_inputs
from bls.request import image_bytes, parse_options
from bls.responses import error_response, output_response


class ModelCallFailed(RuntimeError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = cfg.parameters(config)
        self.meta = ModelMetadata.from_model_config(config)
        self.limits = cfg.decode_limits(params)
        self.timeout_us = cfg.int_parameter(params, "mask_rcnn_timeout_us", 0)
        self.batched = config.get("max_batch_size", 0) > 0
        self.output_names = [spec.name for spec in self.meta.outputs]
        self.workers = ThreadPoolExecutor(cfg.int_parameter(params, "worker_threads", 2, 1),
                                          thread_name_prefix="pipeline_bls")
        # device: empty -> numpy on the host (default); cpu / cuda -> bls/device.py, the
        # image kept in torch tensors, exchanged with mask_rcnn by DLPack.
        self.device = None
        if params.get("device"):
            from bls import device as device_ops

            self.device_ops = device_ops
            self.device = device_ops.parse_device(params["device"])
        self.policy = MonitoringPolicy.from_json(params.get(POLICY_PARAMETER))
        self.monitoring_calls = MonitoringCalls(pb_utils)
        self.metrics = RequestMetrics(pb_utils)
        self.in_flight = set()  # event tasks; strong references until they finish
        self.answering = set()  # request tasks, likewise
        self.max_answering = cfg.int_parameter(
            params, "max_in_flight_requests", 2 * max(config.get("max_batch_size", 0), 1), 1)

    async def execute(self, requests):
        for request in requests:
            task = asyncio.get_running_loop().create_task(self._respond(request))
            self.answering.add(task)
            task.add_done_callback(self.answering.discard)
        while len(self.answering) >= self.max_answering:
            await asyncio.wait(set(self.answering), return_when=asyncio.FIRST_COMPLETED)
        return None  # every request is answered by its own response sender

    async def _respond(self, request):
        """Sends the request's one response (detections or its error), then the
        monitoring event if the policy picks it."""
        start = time.perf_counter()
        seconds, error = {}, None
        try:
            data, answer = await self._answer(request, seconds)
            response = output_response(pb_utils, answer, self.batched)
        except Exception as e:
            answer, error, response = None, e, error_response(pb_utils, e, PIPELINE_NAME)
        seconds["total"] = time.perf_counter() - start
        try:  # before the send, so a client that has its answer reads it counted
            self.metrics.record(error, seconds)
        except Exception as e:  # never holds back the answer
            pb_utils.Logger.log_warn(f"{PIPELINE_NAME}: request metrics not recorded: {e}")
        try:
            request.get_response_sender().send(
                response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:  # the client is gone; nobody is left to tell
            pb_utils.Logger.log_warn(f"{PIPELINE_NAME}: response not sent: {e}")
            return
        if answer is not None and self.policy.enabled:
            try:
                self._monitor(answer, seconds["total"] * 1000, data)
            except Exception:  # monitoring never breaks an answer
                self.monitoring_calls.count("failed")

    async def _answer(self, request, seconds):
        """(image bytes, answer arrays) of one request; raises what its response says.
        Each stage's wall time goes into ``seconds`` (bls/metrics.py)."""
        loop = asyncio.get_running_loop()
        mark = time.perf_counter()
        tensor = pb_utils.get_input_tensor_by_name(request, PIPELINE_INPUT.name)
        data = image_bytes(None if tensor is None else tensor.as_numpy())
        options = parse_options(request.parameters(), self.meta.score_threshold)
        if self.device is None:
            prepared = await loop.run_in_executor(self.workers, prepare, data, self.meta,
                                                  self.limits)
            model_input, original_size = prepared.model_input, prepared.original_size
            finish_on = finish
        else:
            model_input, original_size = await loop.run_in_executor(
                self.workers, self.device_ops.prepare, data, self.meta, self.limits,
                self.device)
            finish_on = self.device_ops.finish
        seconds["prepare"], mark = time.perf_counter() - mark, time.perf_counter()
        # A cancelled (or disconnected) client's request goes no further: the model call
        # is the expensive part.
        if request.is_cancelled():
            raise Cancelled(f"before the {MODEL_NAME} call")
        outputs = await self._call_model(model_input)
        seconds["model"], mark = time.perf_counter() - mark, time.perf_counter()
        if request.is_cancelled():
            raise Cancelled("before the postprocess")
        answer = await loop.run_in_executor(self.workers, finish_on, outputs, original_size,
                                            self.meta, options)
        seconds["finish"] = time.perf_counter() - mark
        return data, answer

    def _monitor(self, answer, latency_ms, data):
        names = [n.decode() for n in answer["class_names"]]
        reasons = self.policy.reasons(answer["scores"], names, latency_ms, random.random())
        if not reasons:
            return
        if len(self.in_flight) >= self.policy.max_in_flight:
            self.monitoring_calls.count("dropped")
            return
        image = data if self.policy.captures(reasons) else None
        task = asyncio.get_running_loop().create_task(
            self._send_event(event_inputs(reasons, answer, latency_ms, image)))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _send_event(self, inputs):
        """Runs after the answer has gone; only counts what happened."""
        timeout_s = self.policy.timeout_ms / 1000
        request = pb_utils.InferenceRequest(
            model_name=MONITORING_NAME, requested_output_names=[MONITORING_OUTPUT.name],
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            timeout=int(self.policy.timeout_ms * 1000))
        call = asyncio.ensure_future(request.async_exec(decoupled=True))
        done, _ = await asyncio.wait({call}, timeout=timeout_s)
        if not done:
            self.monitoring_calls.count("timeout")
        # Not cancelled: the task stays in flight until monitoring answers, so a stuck
        # monitoring fills max_in_flight and further events are dropped, not piled up.
        try:
            failed = any(r.has_error() for r in await call)
        except Exception:
            failed = True
        if done:
            self.monitoring_calls.count("failed" if failed else "ok")

    async def _call_model(self, model_input):
        """numpy in and out on the host; or, on a device, torch tensors both ways by DLPack
        (on a GPU nothing crosses to the host)."""
        on_gpu = self.device is not None and self.device.type == "cuda"
        if self.device is None:
            tensor = pb_utils.Tensor(MODEL_INPUT.name, model_input)
        else:
            from torch.utils.dlpack import to_dlpack

            tensor = pb_utils.Tensor.from_dlpack(MODEL_INPUT.name, to_dlpack(model_input))
        request = pb_utils.InferenceRequest(
            model_name=MODEL_NAME,
            requested_output_names=self.output_names,
            inputs=[tensor],
            timeout=self.timeout_us,
            # mask_rcnn on a GPU (libtorch, KIND_GPU) answers in GPU memory: the numpy
            # path asks for its outputs on the host, the cuda path on its GPU.
            preferred_memory=pb_utils.PreferredMemory(
                pb_utils.TRITONSERVER_MEMORY_GPU if on_gpu else pb_utils.TRITONSERVER_MEMORY_CPU,
                self.device.index or 0 if on_gpu else 0))
        response = await request.async_exec()
        if response.has_error():
            raise ModelCallFailed(f"{MODEL_NAME} failed: {response.error().message()}")
        tensors = {name: pb_utils.get_output_tensor_by_name(response, name)
                   for name in self.output_names}
        if self.device is None:
            return {name: t.as_numpy() for name, t in tensors.items()}
        import torch

        return {name: torch.from_dlpack(t.to_dlpack()).to(self.device)
                for name, t in tensors.items()}

    def finalize(self):
        self.workers.shutdown(wait=False, cancel_futures=True)
