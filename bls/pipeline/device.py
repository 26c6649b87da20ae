"""The device strategy: decode, resize, paste and encode with torch on a device.

On a GPU the image stays in GPU memory from the JPEG bytes to the RLE runs.

pipeline_bls uses ``DeviceOps`` when its config parameter ``device`` is ``cuda`` (or
``cpu``, which runs the same code on the CPU: that is how CI tests it without a GPU).
Only the encoded bytes go in and only run boundaries come out of the device; the model
input and the mask-head output pass between pipeline_bls and mask_rcnn by DLPack.
Against the host strategy (bls/pipeline/host.py) it differs where docs/benchmarks.md
says: torch's antialiased resize instead of PIL's (1 grey level off on some pixels), and
masks equal up to float ties. torch is imported here, never by the rest of bls/.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from bls.contract.metadata import ModelMetadata
from bls.pipeline import image as image_ops
from bls.pipeline.host import PreparedImage
from bls.pipeline.masks import MASK_THRESHOLD, encode_runs

# Bound on the float32 grid_sample output per chunk, as detectron2's GPU_MEM_LIMIT.
CHUNK_BYTES = 1 << 30
_JPEG = b"\xff\xd8\xff"


def parse_device(text: str | None) -> torch.device | None:
    """Read the ``device`` config parameter: empty -> None (the numpy path).

    Raises:
        ValueError: not cpu, cuda or cuda:N, or cuda without a visible device.
    """
    if not text:
        return None
    device = torch.device(text)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"config parameter device={text!r}: must be cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config parameter device={text!r}: no CUDA device is visible")
    return device


def prepare(data: bytes, meta: ModelMetadata, limits: image_ops.DecodeLimits,
            device: torch.device) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode and resize an encoded image into the model input, on ``device``.

    JPEG is decoded on the device where torchvision can; anything else by
    bls.pipeline.image on the host.

    Args:
        data: the encoded image.
        meta: the model's metadata (channel order, resize sizes).
        limits: bounds checked before decoding.
        device: where the work runs.

    Returns:
        (uint8 [3, h, w] on ``device``, resized with torch's antialiased bilinear, in the
        model's channel order; (height, width) of the decoded image).

    Raises:
        InvalidInput: as bls.pipeline.image, for data that is not a usable image.
    """
    image_ops.check_limits(data, limits)
    if data.startswith(_JPEG):
        try:
            chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                              mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        except RuntimeError:  # CMYK, corrupt, ...: the CPU decoder handles or names it
            chw = None
        if chw is not None and meta.channel_order == "BGR":
            chw = chw.flip(0)
    else:
        chw = None
    if chw is None:
        hwc = image_ops.decode_image(data, meta.channel_order, limits)
        chw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))).to(device)
    height, width = chw.shape[1:]
    new_h, new_w = image_ops.resized_shape(height, width, meta.min_size, meta.max_size)
    if (new_h, new_w) != (height, width):
        chw = F.interpolate(chw[None].float(), size=(new_h, new_w), mode="bilinear",
                            antialias=True, align_corners=False)[0]
        chw = chw.round_().clamp_(0, 255).to(torch.uint8)
    return chw.contiguous(), (int(height), int(width))


def paste(masks: torch.Tensor, boxes: np.ndarray, height: int, width: int,
          threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """Paste mask-head probabilities into the image, as detectron2's _do_paste_mask.

    Over the whole image: bilinear grid_sample, zeros outside the mask, in chunks of at
    most CHUNK_BYTES of float32 samples.

    Args:
        masks: float [N, M, M] mask-head probabilities, on the device.
        boxes: float32 [N, 4] x1, y1, x2, y2 in original-image pixels.
        height, width: the original image's size.
        threshold: a pixel is in the mask when its sampled probability is >= this.

    Returns:
        bool [N, height, width] on the masks' device.
    """
    n = masks.shape[0]
    out = torch.empty((n, height, width), dtype=torch.bool, device=masks.device)
    if n == 0:
        return out
    box = torch.as_tensor(boxes, dtype=torch.float32, device=masks.device)
    ys = torch.arange(height, device=masks.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=masks.device, dtype=torch.float32) + 0.5
    chunk = max(1, CHUNK_BYTES // max(1, height * width * 4))
    for start in range(0, n, chunk):
        b = box[start:start + chunk]
        x0, y0, x1, y1 = (v[:, None] for v in b.unbind(1))
        gy = ((ys[None] - y0) / (y1 - y0) * 2 - 1)[:, :, None].expand(-1, height, width)
        gx = ((xs[None] - x0) / (x1 - x0) * 2 - 1)[:, None, :].expand(-1, height, width)
        sampled = F.grid_sample(masks[start:start + chunk, None].float(),
                                torch.stack([gx, gy], dim=3), align_corners=False)
        out[start:start + chunk] = sampled[:, 0] >= threshold
    return out


def encode_rle(pasted: torch.Tensor) -> list[bytes]:
    """Encode pasted masks as COCO compressed RLE; only the run boundaries leave the device.

    Args:
        pasted: bool [N, H, W] on a device.

    Returns:
        N COCO compressed RLE counts strings.
    """
    n, height, width = pasted.shape
    if n == 0:
        return []
    columns = pasted.transpose(1, 2).reshape(n, -1).to(torch.int8)
    edges = torch.diff(F.pad(columns, (1, 1)), dim=1).nonzero()  # rises and falls, in order
    owner, position = edges[:, 0].cpu().numpy(), edges[:, 1].cpu().numpy()
    return encode_runs(position, owner, n, height, width)


class DeviceOps:
    """Run the host strategy's methods (bls/pipeline/host.py HostOps) with torch on ``device``.

    The model is called with torch tensors there and answers torch tensors there."""

    def __init__(self, device: torch.device):
        self.device = device

    def prepare(self, data: bytes, meta: ModelMetadata, limits: image_ops.DecodeLimits,
                resize: str) -> PreparedImage:
        """Decode and resize into a PreparedImage whose model input is on the device.

        Every ``resize`` is torch's here; the model input is uint8 [3, h, w] on the device.
        """
        return PreparedImage(*prepare(data, meta, limits, self.device))

    def to_host(self, value: torch.Tensor) -> np.ndarray:
        """Copy a model output tensor to a numpy array."""
        return value.cpu().numpy()

    def keep_masks(self, value: torch.Tensor, mask_resolution: int) -> torch.Tensor:
        """Reshape the masks output to float [N, M, M] on the device, where it stays."""
        return value.reshape(-1, mask_resolution, mask_resolution)

    def host_masks(self, masks: torch.Tensor) -> np.ndarray:
        """Copy float [N, M, M] masks to float32 [N, M, M] on the host (polygon, box)."""
        return masks.float().cpu().numpy()

    def encode_rle(self, masks: torch.Tensor, boxes: np.ndarray, height: int, width: int
                   ) -> list[bytes]:
        """Paste on the device and encode as COCO compressed RLE, as HostOps.encode_rle."""
        return encode_rle(paste(masks, boxes, height, width))

    def dense(self, masks: torch.Tensor, boxes: np.ndarray, height: int, width: int
              ) -> np.ndarray:
        """Paste on the device into uint8 [N, height, width] on the host, as HostOps.dense."""
        return paste(masks, boxes, height, width).to(torch.uint8).cpu().numpy()

