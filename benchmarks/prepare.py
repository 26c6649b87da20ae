"""python -m benchmarks.prepare: ``prepare`` (decode, resize, CHW) per image on one core, and faster candidates
with their cost in pixels against the exact path (PIL's bilinear, detectron2's). Figures: docs/benchmarks.md.

  python -m benchmarks.prepare --image photo.jpg --generated 1920x1080 --save-reference ref.npz
  /tmp/psvenv/bin/python -m benchmarks.prepare --generated 1920x1080 --reference ref.npz  # Pillow-SIMD
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import PIL

from benchmarks import harness as h
from bls.backend.process import keep_freed_memory
from bls.pipeline import image as image_ops
from bls.pipeline.steps import prepare

MIN_SIZE, MAX_SIZE = 800, 1333
REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
PRECISION_BITS = 22  # Pillow: 32 - 8 - 2

class Meta:  # what prepare reads of ModelMetadata: torchvision's Mask R-CNN takes RGB
    channel_order, min_size, max_size = "RGB", MIN_SIZE, MAX_SIZE

def median_ms(call, repeats: int) -> tuple[float, object]:
    """(median ms of ``repeats`` calls after one, the last result)."""
    runs = [h.timed(call) for _ in range(repeats + 1)][1:]
    return h.summary([s for s, _ in runs])["median_ms"], runs[-1][1]

def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear precompute_coeffs + normalize_coeffs_8bpc: first input index
    int64 [out], weights int32 [out, taps] in 22-bit fixed point."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    ksize = int(math.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - xmin
    x = np.arange(ksize)[None, :]
    w = np.clip(1.0 - np.abs((x + xmin[:, None] - centers[:, None] + 0.5) / support), 0.0, None)
    w[x >= xmax[:, None]] = 0.0
    w = w / w.sum(axis=1, keepdims=True)
    return xmin, (0.5 + w * (1 << PRECISION_BITS)).astype(np.int32)

def _pass(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One separable pass along ``axis``, rounded and clipped to uint8 as Pillow does."""
    in_size = image.shape[axis]
    xmin, k = _coefficients(in_size, out_size)
    acc = np.full(image.shape[:axis] + (out_size,) + image.shape[axis + 1:],
                  1 << (PRECISION_BITS - 1), np.int32)  # int32 holds 255 x 2**22 + bias
    shape = [1] * image.ndim
    shape[axis] = out_size
    for j in range(k.shape[1]):
        idx = np.minimum(xmin + j, in_size - 1)
        acc += np.take(image, idx, axis=axis).astype(np.int32) * k[:, j].reshape(shape)
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)

def resize_exact_numpy(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, C] -> [height, width, C], PIL's bilinear to the bit (horizontal pass
    first, as Pillow)."""
    out = _pass(image, 1, width) if image.shape[1] != width else image
    return _pass(out, 0, height) if image.shape[0] != height else out

def candidates(data: bytes, decoded: np.ndarray, new_h: int, new_w: int, repeats: int,
               torch) -> dict:
    """Each step and candidate on one image (decoded: its BGR decode) -> name: (ms, output)."""
    resize = (lambda: image_ops.resize_image(decoded, new_h, new_w))
    rows = {"decode": median_ms(lambda: image_ops.decode_image(data, "BGR"), repeats),
            f"resize pil (Pillow {PIL.__version__})": median_ms(resize, repeats)}
    if torch is None:  # a Pillow-SIMD venv without torch: PIL rows only
        return rows | {"prepare pil": median_ms(lambda: prepare(data, Meta()).model_input, repeats)}
    from bls.pipeline import device as device_ops

    resized = resize()
    rows |= {"layout": median_ms(lambda: image_ops.to_model_input(resized, True), repeats),
             "prepare pil (default, exact)": median_ms(lambda: prepare(data, Meta()).model_input, repeats),
             "prepare torch (opt-in)": median_ms(lambda: prepare(data, Meta(), resize="torch").model_input,
                                                 repeats),
             "device=cpu (torch float)": median_ms(lambda: device_ops.prepare(
                 data, Meta(), image_ops.DecodeLimits(), torch.device("cpu"))[0].numpy(), repeats)}
    ms, out = median_ms(lambda: resize_exact_numpy(decoded, new_h, new_w), repeats)
    rows["resize exact numpy"] = ms, image_ops.to_model_input(out, True)
    shrink = min(decoded.shape[0] / new_h, decoded.shape[1] / new_w)
    factor = max((f for f in REDUCED if shrink >= f), default=None)
    if factor and data.startswith(b"\xff\xd8"):
        rows[f"reduced JPEG 1/{factor} + pil"] = median_ms(lambda: image_ops.to_model_input(
            image_ops.resize_image(cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[factor]),
                                   new_h, new_w), True), repeats)
    return rows

def compare(name: str, got, exact: np.ndarray) -> str:
    if not any(k in name for k in ("prepare", "device", "reduced", "numpy")) \
            or not isinstance(got, np.ndarray) or got.shape != exact.shape:
        return ""
    diff = np.abs(got.astype(np.int16) - exact.astype(np.int16))
    return f"max {diff.max()}, {np.count_nonzero(diff) / diff.size:.3%} differ"

def main(argv=None) -> int:
    p = h.parser("benchmarks.prepare", __doc__, "image", "generated")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--save-reference", type=Path, help="write the exact model inputs here")
    p.add_argument("--reference", type=Path, help="compare with the exact inputs saved by another run")
    args = h.parse(p, argv, (lambda a: a.repeats < 1, "--repeats must be >= 1"))
    h.begin("benchmarks.prepare", argv)
    cv2.setNumThreads(1)
    keep_freed_memory()  # as the served models do (bls/backend/process.py)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    reference = dict(np.load(args.reference)) if args.reference else {}
    saved = {}
    for image in h.images(args.image, args.generated, ("640x480", "1920x1080", "3361x2521")):
        decoded = image_ops.decode_image(image.data, "BGR")
        height, width = decoded.shape[:2]
        new_h, new_w = image_ops.resized_shape(height, width, MIN_SIZE, MAX_SIZE)
        saved[image.name] = prepare(image.data, Meta()).model_input
        rows = candidates(image.data, decoded, new_h, new_w, args.repeats, torch)
        base = reference.get(image.name, saved[image.name])
        print(f"\n== {image.name}: {width}x{height} -> {new_w}x{new_h}, {len(image.data):,} "
              f"bytes; median ms of {args.repeats}, one thread")
        print(h.table(["step or candidate", "ms", "against exact"],
                      [[name, f"{ms:.1f}", compare(name, out, base)] for name, (ms, out) in rows.items()]))
    if args.save_reference:
        np.savez_compressed(args.save_reference, **saved)
        print(f"\nwrote {args.save_reference}")
    return 0

if __name__ == "__main__":
    h.run_main(main)
