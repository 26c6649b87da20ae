"""python -m benchmarks.prepare: ``prepare`` (decode, resize, CHW) per image on one core,
stage by stage, and the candidates that could make it faster, each with its cost in
pixels against the exact path (detectron2's: PIL's bilinear).

  python -m benchmarks.prepare --image build/bench/mug_1920x1080.jpg --image ../shared/images/mug.jpg
  python -m benchmarks.prepare --generated 1920x1080 --save-reference build/bench/prepare_ref.npz
  # Pillow-SIMD replaces PIL: run this under a venv that has it instead of Pillow, against
  # the exact inputs saved by the stock run:
  /tmp/psvenv/bin/python -m benchmarks.prepare --generated 1920x1080 --reference build/bench/prepare_ref.npz

Rows, each the median of --repeats after a warm-up, on one thread (OpenCV and torch set to
one):
  decode        cv2.imdecode (bls.pipeline.image.decode_image, BGR)
  resize pil    PIL bilinear, as detectron2 (PIL's version printed: Pillow-SIMD shows
                ".post" in it)
  layout        HWC -> CHW, channels in the model's order (bls.pipeline.image.to_model_input)
  resize exact numpy  PIL's bilinear reimplemented with numpy, to the bit (below)
  prepare pil   bls.pipeline.prepare, the default, exact
  prepare torch bls.pipeline.prepare(resize="torch"), opt-in
  device cpu    bls.pipeline.device.prepare on the CPU (torch's float antialiased resize; the
                ``device`` path, which runs on the model's GPU with nvJPEG there)
  reduced JPEG  decoded at 1/2, 1/4 or 1/8 by libjpeg's DCT scaling (cv2.IMREAD_REDUCED_*)
                when the resize shrinks by at least that, then PIL bilinear (not in the
                product: measured only)
"against exact": the largest difference of any model-input value and the share of values
that differ, against ``prepare pil`` (or --reference).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import PIL

from benchmarks.pipeline import begin, check_images, load_images, run_main, table
from bls.pipeline import image as image_ops
from bls.backend.process import keep_freed_memory
from bls.pipeline.steps import prepare

MIN_SIZE, MAX_SIZE = 800, 1333
REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
           8: cv2.IMREAD_REDUCED_COLOR_8}


class Meta:  # what prepare reads of ModelMetadata: torchvision's Mask R-CNN takes RGB
    channel_order, min_size, max_size = "RGB", MIN_SIZE, MAX_SIZE


def median_ms(call, repeats: int) -> tuple[float, object]:
    result = call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000, result


# --------------------------------------------------------------------------- exact numpy
PRECISION_BITS = 22  # Pillow: 32 - 8 - 2


def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc (Resample.c) for the bilinear
    filter: first input index int64 [out], weights int32 [out, taps] in 22-bit fixed
    point (the taps past each window's end weigh 0)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - xmin
    x = np.arange(ksize)[None, :]
    pos = (x + xmin[:, None] - centers[:, None] + 0.5) / filterscale
    w = np.clip(1.0 - np.abs(pos), 0.0, None)
    w[x >= xmax[:, None]] = 0.0
    w = w / w.sum(axis=1, keepdims=True)
    return xmin, (0.5 + w * (1 << PRECISION_BITS)).astype(np.int32)  # w >= 0

def _pass(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One separable pass along ``axis``, rounded and clipped to uint8 as Pillow does."""
    in_size = image.shape[axis]
    xmin, k = _coefficients(in_size, out_size)
    # int32 holds the sums: non-negative weights summing to 2**22, times 255, plus the bias
    acc = np.full(image.shape[:axis] + (out_size,) + image.shape[axis + 1:],
                  1 << (PRECISION_BITS - 1), np.int32)
    shape = [1] * image.ndim; shape[axis] = out_size
    for j in range(k.shape[1]):
        idx = np.minimum(xmin + j, in_size - 1)
        acc += np.take(image, idx, axis=axis).astype(np.int32) * k[:, j].reshape(shape)
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)

def resize_exact_numpy(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, C] -> [height, width, C], PIL's bilinear to the bit (horizontal pass
    first, as Pillow): the exact vectorised candidate. Numpy gathers each tap over the
    whole image, so it moves 5-7x the data PIL's per-pixel loop does."""
    out = image
    if image.shape[1] != width:
        out = _pass(out, 1, width)
    if image.shape[0] != height:
        out = _pass(out, 0, height)
    return out


def candidates(data: bytes, decoded: np.ndarray, new_h: int, new_w: int, repeats: int) -> dict:
    """Each step and candidate on one image: decoded, its BGR decode; new_h, new_w, the
    size it is resized to."""
    import torch

    from bls.pipeline import device as device_ops

    height, width = decoded.shape[:2]
    resized = image_ops.resize_image(decoded, new_h, new_w)
    rows = {
        "decode": median_ms(lambda: image_ops.decode_image(data, "BGR"), repeats),
        f"resize pil (Pillow {PIL.__version__})":
            median_ms(lambda: image_ops.resize_image(decoded, new_h, new_w), repeats),
        "layout": median_ms(lambda: image_ops.to_model_input(resized, True), repeats),
        "prepare pil (default, exact)": median_ms(lambda: prepare(data, Meta()).model_input,
                                                  repeats),
    }
    rows["resize exact numpy"] = median_ms(
        lambda: resize_exact_numpy(decoded, new_h, new_w), repeats)
    rows["prepare torch (opt-in)"] = median_ms(
        lambda: prepare(data, Meta(), resize="torch").model_input, repeats)
    cpu = torch.device("cpu")
    rows["device=cpu (torch float)"] = median_ms(
        lambda: device_ops.prepare(data, Meta(), image_ops.DecodeLimits(), cpu)[0].numpy(),
        repeats)
    shrink = min(height / new_h, width / new_w)
    factor = max((f for f in REDUCED if shrink >= f), default=None)
    if factor and data.startswith(b"\xff\xd8"):
        def reduced():
            small = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[factor])
            return image_ops.to_model_input(image_ops.resize_image(small, new_h, new_w), True)

        rows[f"reduced JPEG 1/{factor} + pil"] = median_ms(reduced, repeats)
    return rows


def to_exact_layout(resized: np.ndarray) -> np.ndarray:
    """A resized BGR [h, w, 3] image as the model input prepare makes (RGB CHW)."""
    return image_ops.to_model_input(resized, True)


def compare(got, exact: np.ndarray) -> str:
    if not isinstance(got, np.ndarray) or got.shape != exact.shape:
        return ""
    diff = np.abs(got.astype(np.int16) - exact.astype(np.int16))
    return f"max {diff.max()}, {np.count_nonzero(diff) / diff.size:.3%} differ"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, action="append", default=[])
    p.add_argument("--generated", action="append", default=[], metavar="WxH")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--save-reference", type=Path, help="write the exact model inputs here")
    p.add_argument("--reference", type=Path,
                   help="compare with the exact inputs saved by another run (Pillow-SIMD)")
    args = p.parse_args(argv)
    check_images(p, args.image)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    begin("benchmarks.prepare", argv)
    cv2.setNumThreads(1)
    keep_freed_memory()  # as the served models do (bls/backend/process.py)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # a Pillow-SIMD venv without torch: PIL rows only
        torch = None
    from benchmarks.sweep import generated_images

    images = (load_images(args.image) if args.image else []) + generated_images(args.generated or (
        [] if args.image else ["640x480", "1920x1080", "3361x2521"]))
    reference = dict(np.load(args.reference)) if args.reference else {}
    saved = {}
    for image in images:
        decoded = image_ops.decode_image(image.data, "BGR")
        height, width = decoded.shape[:2]
        new_h, new_w = image_ops.resized_shape(height, width, MIN_SIZE, MAX_SIZE)
        exact = prepare(image.data, Meta()).model_input
        saved[image.name] = exact
        if torch is None:
            rows = {f"resize pil (Pillow {PIL.__version__})": median_ms(
                        lambda: image_ops.resize_image(decoded, new_h, new_w), args.repeats),
                    "prepare pil": median_ms(lambda: prepare(image.data, Meta()).model_input,
                                             args.repeats)}
        else:
            rows = candidates(image.data, decoded, new_h, new_w, args.repeats)
        base = reference.get(image.name, exact)
        print(f"\n== {image.name}: {width}x{height} -> {new_w}x{new_h}, {len(image.data):,} "
              f"bytes; median ms of {args.repeats}, one thread")
        print(table(["step or candidate", "ms", "against exact"],
                    [[name, f"{ms:.1f}", compare(out if out is not None else None, base)
                      if "prepare" in name or "device" in name or "reduced" in name
                      else (compare(to_exact_layout(out), base) if "numpy" in name else "")]
                     for name, (ms, out) in rows.items()], left=1))
    if args.save_reference:
        np.savez_compressed(args.save_reference, **saved)
        print(f"\nwrote {args.save_reference}")
    return 0


if __name__ == "__main__":
    run_main(main)
