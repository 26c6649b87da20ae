"""python -m benchmarks.stages: one request's stages in process, then model-call variants with
their answers compared (docs/benchmarks.md). What serving adds: python -m benchmarks.pipeline.
"""

import gc
import time
from functools import partial

import numpy as np
import torch
import torchvision  # noqa: F401  registers the ops the TorchScript file calls

from benchmarks import harness as h
from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MaskFormat
from bls.pipeline import image as image_ops
from bls.pipeline import masks as mask_ops
from bls.pipeline.answer import build_answer
from bls.pipeline.instances import from_model_outputs, rescale, select
from export.verify import compare

STAGES = ("decode", "resize", "model", "postprocess", "paste+RLE", "response")


def run_model(module, model_input: np.ndarray, names: list[str], no_grad: bool = False) -> dict:
    with torch.no_grad() if no_grad else torch.inference_mode():
        return {n: t.numpy() for n, t in zip(names, module(torch.from_numpy(model_input)))}


def one_pass(image: h.Image, module, meta) -> tuple[list[float], str, int, np.ndarray]:
    """The pipeline once, in process: seconds per stage, sizes, detections, model input."""
    gc.collect()
    t = [time.perf_counter()]
    decoded = image_ops.decode_image(image.data, meta.channel_order, image_ops.DecodeLimits())
    t.append(time.perf_counter())
    height, width = decoded.shape[:2]
    new_h, new_w = image_ops.resized_shape(height, width, meta.min_size, meta.max_size)
    model_input = image_ops.to_model_input(image_ops.resize_image(decoded, new_h, new_w))
    t.append(time.perf_counter())
    outputs = run_model(module, model_input, [s.name for s in meta.outputs])
    t.append(time.perf_counter())
    det, input_size = from_model_outputs(outputs, meta)
    limit = RequestOptions(meta.score_threshold).max_detections
    det = rescale(select(det, meta.score_threshold, limit), input_size, (height, width))
    t.append(time.perf_counter())
    if det.masks is not None and len(det):
        mask_ops.encode_rle(mask_ops.paste(det.masks, det.boxes, height, width))
    t.append(time.perf_counter())
    build_answer(det, (height, width), meta, MaskFormat.NONE)
    t.append(time.perf_counter())
    return np.diff(t).tolist(), f"{width}x{height}->{new_w}x{new_h}", len(det), model_input


def variants(path, meta, model_input: np.ndarray, counts: list[int], args) -> dict:
    """Each variant loaded, warmed up, timed interleaved; answers against the baseline's first."""
    default, jit = torch.get_num_threads(), torch.jit
    builds = {f"inference_mode (runner today), {default} threads": None, "no_grad": None,
              "channels_last weights": lambda m: m.to(memory_format=torch.channels_last),
              "torch.jit.freeze": jit.freeze,
              "freeze + optimize_for_inference":
                  lambda m: jit.optimize_for_inference(jit.freeze(m))}
    threads = dict.fromkeys(builds, default)
    threads |= {f"intra-op threads {n}": n for n in counts if n != default}
    names = [s.name for s in meta.outputs]
    modules, first = {}, {}

    def call(name: str) -> dict:
        torch.set_num_threads(threads[name])  # every call sets its own
        return run_model(modules[name], model_input, names, name == "no_grad")

    for name in threads:
        module = torch.jit.load(str(path), map_location="cpu").eval()
        modules[name] = builds[name](module) if builds.get(name) else module
        first[name] = [call(name) for _ in range(max(args.warmup, 1))][-1]
    samples, last = h.interleaved({name: partial(call, name) for name in threads}, args.repeats,
                                  0, "variants")
    baseline = next(iter(threads))
    base_ms, report = h.summary(samples[baseline])["median_ms"], {}
    torch.set_num_threads(default)
    for name in threads:
        tensors = [[torch.from_numpy(o[n]) for n in names] for o in (first[baseline], last[name])]
        diffs = compare(*tensors, meta.outputs)
        s = h.summary(samples[name])
        report[name] = s | {"vs_baseline": s["median_ms"] / base_ms - 1, "verdict": (
            "identical" if not any(d.max_abs for d in diffs) else
            "within tolerance" if all(d.ok for d in diffs) else "DIFFERENT"),
            "max_abs": {d.name.rsplit("__", 1)[0]: d.max_abs for d in diffs}}
    return report


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.stages", __doc__, "repository", "size", "image", "generated", "json")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")],
                   help="intra-op thread counts to try, e.g. 1,2 (default 1..CPUs)")
    args = h.parse(p, argv)
    with h.session("benchmarks.stages", argv, args) as run:
        images = h.images(args.image, args.generated, ("640x480", "3361x2521"))
        meta, path = run.repo.meta, h.model_file(run.repo.path)
        print(f"model: {meta.source}, resize {meta.min_size}/{meta.max_size}; file {path}")
        module = torch.jit.load(str(path), map_location="cpu").eval()
        rows, report = [], {"command": run.command, "machine": run.machine, "in_process": {}}
        for image in images:
            runs = [one_pass(image, module, meta) for _ in range(args.warmup + args.repeats)]
            medians = np.median([r[0] for r in runs[args.warmup:]], axis=0) * 1000
            _, size, detections, _ = runs[-1]
            report["in_process"][image.name] = {"size": size, "detections": detections,
                                                "median_ms": dict(zip(STAGES, medians.tolist()))}
            rows.append([image.name, size, detections, *(f"{v:.1f}" for v in medians),
                         f"{medians.sum():.1f}", f"{100 * medians[2] / medians.sum():.1f} %"])
        print(f"\n== Stages in process: median ms of {args.repeats} after {args.warmup} warm-up "
              f"(torch {run.machine['torch_threads']} threads, inference_mode as the runner)")
        print(h.table(["image", "size->input", "dets", *STAGES, "sum", "model share"], rows, 2))
        threads = args.threads or list(range(1, run.machine["usable_cpus"] + 1))
        model_input = one_pass(images[0], module, meta)[3]
        report["variants"] = found = variants(path, meta, model_input, threads, args)
        print(f"\n== Model-call variants on {images[0].name}'s model input: median ms of "
              f"{args.repeats}, interleaved (tolerances: export/verify.py)")
        print(h.table(["variant", "median ms", "min ms", "vs baseline", "answer vs baseline"], [
            [name, f"{r['median_ms']:.0f}", f"{r['min_ms']:.0f}", f"{r['vs_baseline']:+.1%}",
             f"{r['verdict']} (" + ", ".join(f"{k} {v:.2g}" for k, v in r["max_abs"].items())
             + ")"] for name, r in found.items()]))
    h.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    h.run_main(main)
