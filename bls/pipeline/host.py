"""The host strategy: decode, resize, paste and encode with numpy, OpenCV and Pillow.

On the CPU, exactly as detectron2's DefaultPredictor (its resize, its paste). ``HOST`` is
the default strategy of bls.pipeline; bls/pipeline/device.py's ``DeviceOps`` is the other
one, with the same methods, for torch on a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import RESIZE_PIL, RESIZE_TORCH
from bls.pipeline import image as image_ops
from bls.pipeline import masks as mask_ops


@dataclass(frozen=True)
class PreparedImage:
    """Hold what ``prepare`` hands to the model call.

    Attributes:
        model_input: uint8 [3, h, w], resized, in the model's channel order (numpy on
            the host; a torch tensor on DeviceOps' device).
        original_size: (height, width) of the decoded image, after EXIF orientation.
    """

    model_input: object
    original_size: tuple[int, int]


class HostOps:
    """Do the image and mask work in host memory.

    ``device`` is None: the model is called with numpy arrays and answers numpy arrays."""

    device = None

    def prepare(self, data: bytes, meta: ModelMetadata, limits: image_ops.DecodeLimits,
                resize: str) -> PreparedImage:
        """Decode and resize into a PreparedImage (what DefaultPredictor feeds detectron2).

        The image is decoded and resized in OpenCV's BGR order and put in the model's
        order by the final CHW copy: both resizes filter each channel alone, so the order
        they see changes nothing, and a copy is saved.

        Args:
            data: the encoded image.
            meta: the model's metadata (channel order, resize sizes).
            limits: bounds checked before decoding.
            resize: "pil" (detectron2's resize, exact) or "torch" (image.resize_torch:
                faster, 1 grey level off on a few pixels).

        Returns:
            A PreparedImage whose model input is uint8 [3, h, w].

        Raises:
            InvalidInput: for data that is not a usable image (bls.pipeline.image).
        """
        if resize not in (RESIZE_PIL, RESIZE_TORCH):
            raise ValueError(f"resize must be {RESIZE_PIL!r} or {RESIZE_TORCH!r}, got {resize!r}")
        decoded = image_ops.decode_image(data, "BGR", limits)
        reverse = meta.channel_order != "BGR"
        height, width = decoded.shape[:2]
        new_h, new_w = image_ops.resized_shape(height, width, meta.min_size, meta.max_size)
        if resize == RESIZE_TORCH:
            model_input = image_ops.resize_torch(decoded, new_h, new_w, reverse)
        else:
            model_input = image_ops.to_model_input(
                image_ops.resize_image(decoded, new_h, new_w), reverse)
        return PreparedImage(model_input, (height, width))

    def model_tensor(self, pb_utils, name: str, model_input: np.ndarray):
        """The BLS input tensor ``name`` for the model input (uint8 [3, h, w])."""
        return pb_utils.Tensor(name, model_input)

    def preferred_memory(self, pb_utils):
        """Where the BLS call asks for the model's outputs: host memory. (mask_rcnn on a
        GPU, libtorch KIND_GPU, answers in GPU memory unless asked.)"""
        return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def from_model(self, tensor) -> np.ndarray:
        """A BLS output tensor as this strategy keeps it: a numpy array."""
        return tensor.as_numpy()

    def to_host(self, value) -> np.ndarray:
        """Return a model output as a numpy array (here it already is one)."""
        return np.asarray(value)

    def keep_masks(self, value, mask_resolution: int) -> np.ndarray:
        """Reshape the masks output to float32 [N, M, M] where this strategy pastes them."""
        return np.asarray(value, dtype=np.float32).reshape(-1, mask_resolution, mask_resolution)

    def paste(self, masks: np.ndarray, boxes: np.ndarray, height: int, width: int
              ) -> mask_ops.ColumnRuns:
        """Paste the masks once (bls/pipeline/masks.py paste); every format encodes this.

        Args:
            masks: float32 [N, M, M] mask-head probabilities.
            boxes: float32 [N, 4] x1, y1, x2, y2 in original-image pixels.
            height, width: the original image's size.
        """
        return mask_ops.paste(masks, boxes, height, width)

    def encode_rle(self, pasted: mask_ops.ColumnRuns) -> list[bytes]:
        """The pasted masks as N COCO compressed RLE counts strings."""
        return mask_ops.encode_rle(pasted)

    def dense(self, pasted: mask_ops.ColumnRuns) -> np.ndarray:
        """The pasted masks as uint8 [N, height, width], 1 inside each."""
        return mask_ops.dense_masks(pasted)

    def windows(self, pasted: mask_ops.ColumnRuns, boxes: np.ndarray):
        """The pasted masks one MaskWindow at a time, over their boxes' paste windows."""
        return mask_ops.windows(pasted, boxes)


HOST = HostOps()
