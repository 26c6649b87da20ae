"""The ensemble's two Python steps around mask_rcnn: ``PreprocessStep`` (encoded image ->
model input and original size) and ``PostprocessStep`` (model outputs -> the answer),
with the same bls.pipeline functions as pipeline_bls, so both paths give one answer.

Each request of a batch is answered on its own: a bad one gets its error, its
neighbours their answers. ``pb_utils`` is passed in.
"""

from __future__ import annotations

import numpy as np

from bls.backend.adapter import ModelInstance
from bls.backend.metrics import ModelStart
from bls.backend.process import configure_process
from bls.backend.request import parse_options, request_image
from bls.backend.responses import error_response, output_response
from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import POSTPROCESS_PARAMETERS, PREPROCESS_PARAMETERS
from bls.contract.tensors import MODEL_INPUT, ORIGINAL_SIZE, POSTPROCESS_NAME, PREPROCESS_NAME
from bls.pipeline.image import decode_limits
from bls.pipeline.steps import finish, prepare


class PreprocessStep:
    """preprocess (ensemble step 1): ``image`` -> ``MODEL_INPUT`` and ``original_size``."""

    def __init__(self, pb_utils, model_config: dict, instance: ModelInstance | None = None):
        self.pb = pb_utils
        self.meta = ModelMetadata.from_model_config(model_config)
        values = PREPROCESS_PARAMETERS.read_config(model_config)
        configure_process(values)
        self.limits = decode_limits(values)
        self.resize = values["resize"]
        self.started = ModelStart(pb_utils, PREPROCESS_NAME)

    def execute(self, requests) -> list:
        """One response per request, in order."""
        responses = []
        for request in requests:
            try:
                prepared = prepare(request_image(self.pb, request), self.meta, self.limits,
                                   self.resize)
                responses.append(output_response(self.pb, {
                    MODEL_INPUT.name: prepared.model_input,
                    ORIGINAL_SIZE.name: np.array(prepared.original_size, np.int64)}, False))
            except Exception as e:
                responses.append(error_response(self.pb, e, PREPROCESS_NAME))
        return responses

    def finalize(self) -> None:
        """Nothing is held between requests."""


class PostprocessStep:
    """postprocess (ensemble step 3): mask_rcnn's outputs and ``original_size`` -> the
    answer, refused past ``max_answer_bytes``."""

    def __init__(self, pb_utils, model_config: dict, instance: ModelInstance | None = None):
        self.pb = pb_utils
        self.meta = ModelMetadata.from_model_config(model_config)
        values = POSTPROCESS_PARAMETERS.read_config(model_config)
        self.max_answer_bytes = values["max_answer_bytes"]
        configure_process(values)
        self.started = ModelStart(pb_utils, POSTPROCESS_NAME)

    def execute(self, requests) -> list:
        """One response per request, in order."""
        responses = []
        for request in requests:
            try:
                outputs = {spec.name: self.pb.get_input_tensor_by_name(request, spec.name)
                           .as_numpy() for spec in self.meta.outputs}
                height, width = self.pb.get_input_tensor_by_name(
                    request, ORIGINAL_SIZE.name).as_numpy().tolist()
                options = parse_options(request.parameters(), self.meta.score_threshold)
                answer = finish(outputs, (height, width), self.meta, options,
                                self.max_answer_bytes)
                responses.append(output_response(self.pb, answer, False))
            except Exception as e:
                responses.append(error_response(self.pb, e, POSTPROCESS_NAME))
        return responses

    def finalize(self) -> None:
        """Nothing is held between requests."""
