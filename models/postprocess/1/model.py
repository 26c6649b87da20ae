"""postprocess (ensemble step 3): model outputs -> the pipeline's answer, with the same
bls function as pipeline_bls."""

import json

import triton_python_backend_utils as pb_utils

from bls.backend.metrics import ModelStart
from bls.backend.process import configure_process
from bls.backend.request import parse_options
from bls.backend.responses import error_response, output_response
from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import POSTPROCESS_PARAMETERS
from bls.contract.tensors import ORIGINAL_SIZE, POSTPROCESS_NAME
from bls.pipeline import finish


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.meta = ModelMetadata.from_model_config(config)
        values = POSTPROCESS_PARAMETERS.read_config(config)
        self.max_answer_bytes = values["max_answer_bytes"]
        configure_process(values)
        self.started = ModelStart(pb_utils, POSTPROCESS_NAME)
        self.input_names = [spec.name for spec in self.meta.outputs]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                outputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                           for name in self.input_names}
                height, width = pb_utils.get_input_tensor_by_name(
                    request, ORIGINAL_SIZE.name).as_numpy().tolist()
                options = parse_options(request.parameters(), self.meta.score_threshold)
                responses.append(output_response(
                    pb_utils, finish(outputs, (height, width), self.meta, options,
                                     self.max_answer_bytes), False))
            except Exception as e:
                responses.append(error_response(pb_utils, e, POSTPROCESS_NAME))
        return responses
