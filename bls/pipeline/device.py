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
from bls.pipeline.masks import MASK_THRESHOLD, MaskWindow, encode_runs, window_bounds

# Bound on the float32 grid_sample output per chunk, as detectron2's GPU_MEM_LIMIT.
CHUNK_BYTES = 1 << 30
_JPEG = b"\xff\xd8\xff"


def parse_device(text: str | None, instance=None) -> torch.device | None:
    """Read the ``device`` config parameter: empty -> None (the numpy path).

    Args:
        text: ``cpu``, ``cuda`` (the GPU Triton assigned to the instance) or ``cuda:N``
            (that one, whatever Triton assigned), or empty.
        instance: the model instance (bls/backend/adapter.py ModelInstance); its
            ``device_id`` is the GPU of ``cuda``.

    Raises:
        ValueError: not cpu, cuda or cuda:N, or a CUDA device that is not visible.
    """
    if not text:
        return None
    device = torch.device(text)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"config parameter device={text!r}: must be cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"config parameter device={text!r}: no CUDA device is visible")
    if device.index is None:
        device = torch.device("cuda", getattr(instance, "device_id", 0))
    if device.index >= torch.cuda.device_count():
        raise ValueError(f"config parameter device={text!r}: cuda:{device.index} is not "
                         f"visible ({torch.cuda.device_count()} CUDA devices)")
    return device


def use_device(device: torch.device) -> None:
    """Make ``device`` the calling thread's current CUDA device (nothing for the CPU).

    pipeline_bls's threads call it when they start: python_backend takes the current
    device's stream when it imports a GPU tensor by DLPack (pb_tensor.cc FromDLPack)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


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

    def model_tensor(self, pb_utils, name: str, model_input: torch.Tensor):
        """The BLS input tensor ``name`` for the model input, by DLPack, without a copy.

        The tensor itself, not ``to_dlpack(tensor)``: for an object with ``__dlpack__``
        python_backend makes its stream wait for the producer's stream and synchronises
        it (pb_tensor.cc FromDLPack), so mask_rcnn never reads the image before decode
        and resize have finished on the GPU; a bare capsule is taken as it is."""
        return pb_utils.Tensor.from_dlpack(name, model_input)

    def preferred_memory(self, pb_utils):
        """Where the BLS call asks for the model's outputs: this GPU, or host memory."""
        if self.device.type == "cuda":
            return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU,
                                            self.device.index)
        return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def from_model(self, tensor) -> torch.Tensor:
        """A BLS output tensor as a torch tensor on the device (the tensor's own
        ``__dlpack__``, as python_backend documents; no copy where it already is)."""
        return torch.from_dlpack(tensor).to(self.device)

    def to_host(self, value: torch.Tensor) -> np.ndarray:
        """Copy a model output tensor to a numpy array."""
        return value.cpu().numpy()

    def keep_masks(self, value: torch.Tensor, mask_resolution: int) -> torch.Tensor:
        """Reshape the masks output to float [N, M, M] on the device, where it stays."""
        return value.reshape(-1, mask_resolution, mask_resolution)

    def paste(self, masks: torch.Tensor, boxes: np.ndarray, height: int, width: int
              ) -> torch.Tensor:
        """Paste the masks once, on the device (paste); every format encodes this.

        Returns:
            bool [N, height, width] on the device.
        """
        return paste(masks, boxes, height, width)

    def encode_rle(self, pasted: torch.Tensor) -> list[bytes]:
        """The pasted masks as COCO compressed RLE; only run boundaries leave the device."""
        return encode_rle(pasted)

    def dense(self, pasted: torch.Tensor) -> np.ndarray:
        """The pasted masks as uint8 [N, height, width] on the host."""
        return pasted.to(torch.uint8).cpu().numpy()

    def windows(self, pasted: torch.Tensor, boxes: np.ndarray):
        """The pasted masks one MaskWindow at a time, each window copied to the host."""
        height, width = pasted.shape[1:]
        for mask, (x_lo, y_lo, x_hi, y_hi) in zip(
                pasted, window_bounds(boxes, height, width).tolist()):
            if x_hi <= x_lo or y_hi <= y_lo:
                yield MaskWindow(0, 0, np.zeros((0, 0), bool))
            else:
                yield MaskWindow(y_lo, x_lo, mask[y_lo:y_hi, x_lo:x_hi].cpu().numpy())
