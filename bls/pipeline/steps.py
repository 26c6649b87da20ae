"""Run the pipeline's two steps around the model call, or the whole pipeline in process.

pipeline_bls runs ``prepare`` -> BLS call to mask_rcnn -> ``finish``; the ensemble runs
them in its preprocess and postprocess models; ``Pipeline`` runs them around any callable
(the TorchScript module in tests, benchmarks and the client's reference), so every path
shares one implementation. ``ops`` is where the work runs: HOST (bls/pipeline/host.py) or
a DeviceOps (bls/pipeline/device.py); both take and give the same shapes.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import RESIZE_PIL, RequestOptions
from bls.pipeline import image as image_ops
from bls.pipeline.answer import build_answer
from bls.pipeline.host import HOST, HostOps, PreparedImage
from bls.pipeline.instances import from_model_outputs, rescale, select


def prepare(data: bytes, meta: ModelMetadata,
            limits: image_ops.DecodeLimits = image_ops.DecodeLimits(),
            resize: str = RESIZE_PIL, ops: HostOps = HOST) -> PreparedImage:
    """Decode and resize an encoded image into the model input.

    Args:
        data: the encoded image.
        meta: the model's metadata.
        limits: bounds checked before decoding.
        resize: "pil" (exact) or "torch" (bls/contract/parameters.py RESIZE).
        ops: where the work runs (HOST or a DeviceOps).

    Returns:
        A PreparedImage: the model input (uint8 [3, h, w], what DefaultPredictor feeds
        detectron2) and the decoded image's (height, width).

    Raises:
        InvalidInput: naming the input, for bytes that are not a usable image.
    """
    return ops.prepare(data, meta, limits, resize)


def finish(model_outputs: Mapping[str, object], original_size: tuple[int, int],
           meta: ModelMetadata, options: RequestOptions,
           max_answer_bytes: int | None = None, ops: HostOps = HOST) -> dict[str, np.ndarray]:
    """Turn the model's outputs into the answer.

    Args:
        model_outputs: output tensors by contract name (bls/pipeline/instances.py
            from_model_outputs), where ``ops`` keeps them.
        original_size: (height, width) of the decoded image.
        meta: the model's metadata.
        options: the request's parameters.
        max_answer_bytes: the bound on the answer; None for none.
        ops: where the work runs (HOST or a DeviceOps).

    Returns:
        Output arrays by name, no batch dim (bls/pipeline/answer.py build_answer).

    Raises:
        InvalidInput: the answer would be over ``max_answer_bytes`` (refused before it
            is built).
    """
    instances, input_size = from_model_outputs(model_outputs, meta, ops)
    instances = select(instances, options.score_threshold, options.max_detections)
    instances = rescale(instances, input_size, original_size)
    return build_answer(instances, original_size, meta, options.mask_format, max_answer_bytes,
                        options.polygon_tolerance, ops)


ModelCall = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class Pipeline:
    """Run the whole pipeline in process: ``Pipeline(meta, model)(image_bytes, options)``.

    Args:
        meta: the model's metadata.
        model: maps the model input (uint8 [3, h, w]) to output arrays by contract name.
        resize: as ``prepare``'s (the served models' ``resize`` parameter).
    """

    def __init__(self, meta: ModelMetadata, model: ModelCall, resize: str = RESIZE_PIL):
        self.meta = meta
        self.model = model
        self.resize = resize

    def __call__(self, data: bytes, options: RequestOptions | None = None
                 ) -> dict[str, np.ndarray]:
        options = options or RequestOptions(self.meta.score_threshold)
        prepared = prepare(data, self.meta, resize=self.resize)
        outputs = self.model(prepared.model_input)
        return finish(outputs, prepared.original_size, self.meta, options)
