"""pipeline_bls: encoded image -> detections, calling mask_rcnn through BLS.

A thin adapter over bls/: prepare (decode, resize) and finish (rescale, paste, encode)
run in worker threads, the model call is an async BLS request, and the requests of one
batch run concurrently. Each request is answered on its own: a bad one gets an
INVALID_ARG error naming the input, its neighbours their detections.
"""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

from bls import config as cfg
from bls.contract import MODEL_INPUT, MODEL_NAME, PIPELINE_INPUT, PIPELINE_NAME
from bls.metadata import ModelMetadata
from bls.pipeline import finish, prepare
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

    async def execute(self, requests):
        return await asyncio.gather(*(self._answer(r) for r in requests))

    async def _answer(self, request):
        loop = asyncio.get_running_loop()
        try:
            tensor = pb_utils.get_input_tensor_by_name(request, PIPELINE_INPUT.name)
            data = image_bytes(None if tensor is None else tensor.as_numpy())
            options = parse_options(request.parameters(), self.meta.score_threshold)
            prepared = await loop.run_in_executor(self.workers, prepare, data, self.meta,
                                                  self.limits)
            outputs = await self._call_model(prepared.model_input)
            answer = await loop.run_in_executor(self.workers, finish, outputs,
                                                prepared.original_size, self.meta, options)
            return output_response(pb_utils, answer, self.batched)
        except Exception as e:
            return error_response(pb_utils, e, PIPELINE_NAME)

    async def _call_model(self, model_input):
        request = pb_utils.InferenceRequest(
            model_name=MODEL_NAME,
            requested_output_names=self.output_names,
            inputs=[pb_utils.Tensor(MODEL_INPUT.name, model_input)],
            timeout=self.timeout_us,
            # mask_rcnn on a GPU (libtorch, KIND_GPU) answers in GPU memory; the
            # postprocess runs on numpy, so ask for the outputs on the host.
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
        response = await request.async_exec()
        if response.has_error():
            raise ModelCallFailed(f"{MODEL_NAME} failed: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy()
                for name in self.output_names}

    def finalize(self):
        self.workers.shutdown(wait=False, cancel_futures=True)
