"""The pipeline's two halves around the model call, and an in-process pipeline.

pipeline_bls runs ``prepare`` -> BLS call to mask_rcnn -> ``finish``; the ensemble runs
them in its preprocess and postprocess models; ``Pipeline`` runs them around any
callable (the TorchScript module in tests, benchmarks and the client's reference), so
every path shares one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from bls import image as image_ops
from bls import postprocess
from bls.config import RESIZE_PIL, RESIZE_TORCH
from bls.memory import keep_freed_memory
from bls.metadata import ModelMetadata
from bls.request import RequestOptions


@dataclass(frozen=True)
class PreparedImage:
    """model_input: uint8 [3, h, w], resized, in the model's channel order.
    original_size: (height, width) of the decoded image (after EXIF orientation)."""

    model_input: np.ndarray
    original_size: tuple[int, int]


def configure_process(values: Mapping) -> None:
    """The process-wide settings of a model that runs the pipeline's halves (pipeline_bls,
    preprocess, postprocess), from its config values (bls/config.py): keep freed memory
    (bls/memory.py); with ``resize`` "torch", torch on one thread per call, so each worker
    thread resizes one image on one core (torch's default, a thread per core per call,
    oversubscribes). Call it before any worker thread starts."""
    if values["keep_freed_memory"] == "true":
        keep_freed_memory()
    if values.get("resize") == RESIZE_TORCH:
        import torch

        torch.set_num_threads(1)


def prepare(data: bytes, meta: ModelMetadata,
            limits: image_ops.DecodeLimits = image_ops.DecodeLimits(),
            resize: str = RESIZE_PIL) -> PreparedImage:
    """Encoded bytes -> the model input (what DefaultPredictor feeds detectron2).

    resize: "pil" (detectron2's own resize, exact) or "torch" (bls.image.resize_torch:
    faster, within 1 of it on a few pixels). The image is decoded and resized in OpenCV's
    BGR order and put in the model's order by the final CHW copy: both resizes filter each
    channel alone, so the order they see changes nothing, and a full-size copy is saved."""
    if resize not in (RESIZE_PIL, RESIZE_TORCH):
        raise ValueError(f"resize must be {RESIZE_PIL!r} or {RESIZE_TORCH!r}, got {resize!r}")
    decoded = image_ops.decode_image(data, "BGR", limits)
    reverse = meta.channel_order != "BGR"
    height, width = decoded.shape[:2]
    new_h, new_w = image_ops.resized_shape(height, width, meta.min_size, meta.max_size)
    if resize == RESIZE_TORCH:
        model_input = image_ops.resize_torch(decoded, new_h, new_w, reverse)
    else:
        model_input = image_ops.to_model_input(image_ops.resize_image(decoded, new_h, new_w),
                                               reverse)
    return PreparedImage(model_input, (height, width))


def finish(model_outputs: Mapping[str, np.ndarray], original_size: tuple[int, int],
           meta: ModelMetadata, options: RequestOptions,
           max_answer_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Model outputs (by contract name) -> the pipeline's output tensors (no batch dim);
    an answer over ``max_answer_bytes`` is refused before it is built."""
    det, input_size = postprocess.from_model_outputs(model_outputs, meta)
    det = postprocess.select(det, options.score_threshold, options.max_detections)
    det = postprocess.rescale(det, input_size, original_size)
    return postprocess.answer(det, original_size, meta, options.mask_format, max_answer_bytes,
                              options.polygon_tolerance)


ModelCall = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class Pipeline:
    """The whole pipeline in process: ``Pipeline(meta, model)(image_bytes, options)``.

    ``model`` maps the model input (uint8 [3, h, w]) to output arrays by contract name;
    ``resize`` as ``prepare``'s (the served models' ``resize`` parameter).
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
