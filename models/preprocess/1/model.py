"""preprocess (ensemble step 1): encoded image -> model input and original size,
with the same bls function as pipeline_bls."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from bls.backend.metrics import ModelStart
from bls.backend.process import configure_process
from bls.backend.request import image_bytes
from bls.backend.responses import error_response, output_response
from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import PREPROCESS_PARAMETERS
from bls.contract.tensors import MODEL_INPUT, ORIGINAL_SIZE, PIPELINE_INPUT, PREPROCESS_NAME
from bls.pipeline import prepare
from bls.pipeline.image import decode_limits


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.meta = ModelMetadata.from_model_config(config)
        values = PREPROCESS_PARAMETERS.read_config(config)
        configure_process(values)
        self.limits = decode_limits(values)
        self.resize = values["resize"]
        self.started = ModelStart(pb_utils, PREPROCESS_NAME)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, PIPELINE_INPUT.name)
                prepared = prepare(image_bytes(None if tensor is None else tensor.as_numpy()),
                                   self.meta, self.limits, self.resize)
                responses.append(output_response(pb_utils, {
                    MODEL_INPUT.name: prepared.model_input,
                    ORIGINAL_SIZE.name: np.array(prepared.original_size, np.int64)}, False))
            except Exception as e:
                responses.append(error_response(pb_utils, e, PREPROCESS_NAME))
        return responses
