"""python -m benchmarks.prepare: prepare's candidates on one core against the exact path."""

import timeit
from types import SimpleNamespace

import cv2
import numpy as np
import PIL
import torch

from benchmarks import harness as h
from bls.backend.process import keep_freed_memory
from bls.pipeline import image as image_ops
from bls.pipeline.device import prepare as device_prepare
from bls.pipeline.steps import prepare

META = SimpleNamespace(channel_order="RGB", min_size=800, max_size=1333)  # what prepare reads


def candidates(data: bytes, decoded: np.ndarray, new_h: int, new_w: int) -> dict:
    """Each step and candidate on one image: name -> a call."""
    limits, cpu, size = image_ops.DecodeLimits(), torch.device("cpu"), (new_h, new_w)
    steps = {
        "decode": lambda: image_ops.decode_image(data, "BGR"),
        f"resize pil (Pillow {PIL.__version__})": lambda: image_ops.resize_image(decoded, *size),
        "prepare pil (default, exact)": lambda: prepare(data, META).model_input,
        "prepare torch (opt-in)": lambda: prepare(data, META, resize="torch").model_input,
        "device=cpu (torch float)": lambda: device_prepare(data, META, limits, cpu)[0].numpy()}
    if min(decoded.shape[0] / new_h, decoded.shape[1] / new_w) >= 2 and data[:2] == b"\xff\xd8":
        steps["reduced JPEG 1/2 + pil"] = lambda: image_ops.resize_image(cv2.imdecode(  # libjpeg's
            np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2), *size)  # DCT scaling
    return steps


def main(argv=None) -> int:
    p = h.parser("benchmarks.prepare", __doc__, "image", "generated")
    p.add_argument("--repeats", type=int, default=20)
    args = h.parse(p, argv)
    h.begin("benchmarks.prepare", argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    keep_freed_memory()  # as the served models do (bls/backend/process.py)
    for image in h.images(args.image, args.generated, ("640x480", "1920x1080", "3361x2521")):
        decoded = image_ops.decode_image(image.data, "BGR")
        new_h, new_w = image_ops.resized_shape(*decoded.shape[:2], META.min_size, META.max_size)
        base = prepare(image.data, META).model_input.astype(np.int16)
        print(f"\n== {image.name} -> {new_w}x{new_h}: median ms of {args.repeats}, one thread")
        rows = []
        for name, call in candidates(image.data, decoded, new_h, new_w).items():
            out = call()  # also the warm-up
            ms = np.median(timeit.repeat(call, number=1, repeat=args.repeats)) * 1000
            out = image_ops.to_model_input(out, True) if out.shape[-1] == 3 else out  # HWC BGR
            diff = np.abs(out.astype(np.int16) - base) if out.shape == base.shape else None
            rows.append([name, f"{ms:.1f}", "" if diff is None else
                         f"max {diff.max()}, {np.count_nonzero(diff) / diff.size:.3%} differ"])
        print(h.table(["step or candidate", "ms", "against exact"], rows))
    return 0


if __name__ == "__main__":
    h.run_main(main)
