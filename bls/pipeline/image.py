"""Decode and resize images, matching what detectron2's DefaultPredictor feeds its model.

Decoding uses OpenCV (PIL for what OpenCV does not read, such as GIF); the conversions
(EXIF orientation, grayscale, alpha, 16-bit) give the pixels detectron2's ``read_image``
(PIL ``convert``) gives. Resizing reproduces
``ResizeShortestEdge`` + ``ResizeTransform``, which resize uint8 images with PIL's
bilinear filter; OpenCV's INTER_LINEAR differs (no antialiasing on downscale), which
would shift every pixel the model sees.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from bls.contract.parameters import MAX_ENCODED_BYTES, MAX_PIXELS
from bls.contract.tensors import PIPELINE_INPUT
from bls.errors import InvalidInput

# Applies EXIF orientation (OpenCV does, unless IMREAD_UNCHANGED), keeps 16-bit depth
# so it can be reduced the way PIL does, drops alpha like PIL's convert("RGB").
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


@dataclass(frozen=True)
class DecodeLimits:
    """Bound one encoded image; a request beyond the bounds is refused before decoding."""

    max_encoded_bytes: int = MAX_ENCODED_BYTES
    max_pixels: int = MAX_PIXELS


def _header_size(data: bytes, name: str, limits: DecodeLimits) -> tuple[int, int] | None:
    """(width, height) read from the header alone (PIL decodes nothing on open), or
    None if PIL does not know the format."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError as e:  # PIL's own, far larger, bound
        declared = re.search(r"\((\d+) pixels\)", str(e))
        raise InvalidInput(name, f"declares {declared.group(1) if declared else 'too many'} "
                                 f"pixels, over the limit of {limits.max_pixels} pixels "
                                 "(a decompression bomb?)") from None
    except Exception:  # not a format PIL reads: OpenCV gets its own try below
        return None


def check_limits(data: bytes, limits: DecodeLimits, name: str = PIPELINE_INPUT.name) -> None:
    """Refuse data no decoder should see: empty, too many bytes, too many declared pixels.

    Raises:
        InvalidInput: naming ``name``.
    """
    if len(data) == 0:
        raise InvalidInput(name, "is empty (0 bytes); expected an encoded image")
    if len(data) > limits.max_encoded_bytes:
        raise InvalidInput(name, f"is {len(data)} bytes, over the limit of "
                                 f"{limits.max_encoded_bytes} bytes")
    size = _header_size(data, name, limits)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        raise InvalidInput(name, f"declares {size[0]}x{size[1]} pixels, over the limit of "
                                 f"{limits.max_pixels} pixels")


def decode_image(data: bytes, channel_order: str, limits: DecodeLimits = DecodeLimits(),
                 name: str = PIPELINE_INPUT.name) -> np.ndarray:
    """Decode an encoded image as detectron2's read_image would.

    Args:
        data: the encoded image (JPEG, PNG, BMP, TIFF, WebP, GIF).
        channel_order: "BGR" or "RGB".
        limits: bounds checked before and after decoding.
        name: the input's name, for errors.

    Returns:
        uint8 [H, W, 3] in ``channel_order``, after EXIF orientation.

    Raises:
        InvalidInput: naming ``name``, for empty, oversized or undecodable data.
    """
    check_limits(data, limits, name)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    if image is None or image.size == 0:
        image = _decode_with_pil(data)
    if image is None or image.size == 0:
        raise InvalidInput(name, f"cannot be decoded as an image ({len(data)} bytes, "
                                 f"starting {data[:8]!r}); send JPEG, PNG, BMP, TIFF, WebP "
                                 f"or GIF")
    if image.shape[0] * image.shape[1] > limits.max_pixels:
        raise InvalidInput(name, f"has {image.shape[1]}x{image.shape[0]} pixels, over the "
                                 f"limit of {limits.max_pixels} pixels")
    image = _to_uint8(image, name)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channel_order == "RGB":
        image = image[:, :, ::-1]
    elif channel_order != "BGR":
        raise ValueError(f"channel_order must be BGR or RGB, got {channel_order!r}")
    return np.ascontiguousarray(image)


def _decode_with_pil(data: bytes) -> np.ndarray | None:
    """What OpenCV does not read (GIF: its first frame), the way detectron2's read_image
    reads everything: PIL, EXIF orientation, convert("RGB"). -> uint8 BGR, or None."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            return np.asarray(rgb)[:, :, ::-1]
    except Exception:  # truncated, corrupt or unknown: the caller names the input
        return None


def _to_uint8(image: np.ndarray, name: str) -> np.ndarray:
    """Reduce to 8 bits as PIL's convert("RGB") does: 16-bit grayscale is clipped at
    255, 16-bit colour keeps its high byte."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        if image.ndim == 2:
            return np.minimum(image, 255).astype(np.uint8)
        return (image >> 8).astype(np.uint8)
    if image.dtype in (np.float32, np.float64):
        return np.clip(image, 0, 255).astype(np.uint8)
    raise InvalidInput(name, f"decodes to unsupported pixel type {image.dtype}")


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Compute the resized (height, width), as detectron2's ResizeShortestEdge.get_output_shape.

    Except that no side becomes 0 (detectron2 would fail on a 1 x 5000 image; we keep
    1 px)."""
    scale = min_size / min(height, width)
    if height < width:
        new_h, new_w = float(min_size), scale * width
    else:
        new_h, new_w = scale * height, float(min_size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize with PIL bilinear, as detectron2's ResizeTransform.apply_image does for uint8.

    Args:
        image: uint8 [H, W, 3].
        height, width: the output size.

    Returns:
        uint8 [height, width, 3].
    """
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_torch(image: np.ndarray, height: int, width: int,
                 reverse_channels: bool = False) -> np.ndarray:
    """Resize with torch's antialiased bilinear into the model input layout, on this thread.

    The same filter as PIL's bilinear (a triangle stretched by the scale factor, separable,
    fixed-point weights), but torch's vectorised uint8 kernel (as Pillow-SIMD's) rounds its
    weights to 16 bits where PIL keeps 22: a few pixels come out 1 higher or lower
    (docs/benchmarks.md gives the share and what it does to parity with detectron2).

    Args:
        image: uint8 [H, W, 3].
        height, width: the output size.
        reverse_channels: reverse the channel order (BGR <-> RGB).

    Returns:
        contiguous uint8 [3, height, width].
    """
    import torch

    if image.shape[:2] == (height, width):
        return to_model_input(image, reverse_channels)
    source = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)  # a channels-last view
    with torch.inference_mode():
        resized = torch.nn.functional.interpolate(source, size=(height, width),
                                                  mode="bilinear", antialias=True,
                                                  align_corners=False)
    chw = resized[0].numpy()
    if resized.is_contiguous():  # torch 2.x answers NCHW: planes, copied in the right order
        return np.ascontiguousarray(chw[::-1]) if reverse_channels else chw
    return to_model_input(chw.transpose(1, 2, 0), reverse_channels)  # channels-last


def to_model_input(image: np.ndarray, reverse_channels: bool = False) -> np.ndarray:
    """Copy an image into the model input layout, in one copy.

    The copy is OpenCV's split into the planes of the output (faster than numpy's strided
    transpose copy: docs/benchmarks.md, 'Measured: the pipeline at GPU speed').

    Args:
        image: uint8 [H, W, 3].
        reverse_channels: reverse the channel order (BGR <-> RGB).

    Returns:
        contiguous uint8 [3, H, W].
    """
    out = np.empty((3, *image.shape[:2]), np.uint8)
    planes = [out[2], out[1], out[0]] if reverse_channels else [out[0], out[1], out[2]]
    written = cv2.split(np.ascontiguousarray(image), planes)
    if not all(np.shares_memory(w, p) for w, p in zip(written, planes)):  # never seen
        chw = image.transpose(2, 0, 1)
        return np.ascontiguousarray(chw[::-1] if reverse_channels else chw)
    return out


def decode_limits(values: dict) -> DecodeLimits:
    """Make DecodeLimits from a model's config values (bls.contract.parameters.DECODE_LIMITS)."""
    return DecodeLimits(values["max_encoded_bytes"], values["max_pixels"])
