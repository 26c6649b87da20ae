"""python -m benchmarks.gpu_check (make gpu-check): the GPU checks in one command, on one GPU.

1. The CUDA tests (tests/test_device.py, its @CUDA tests included).
2. Served answers against in-process references on the photos given (--image) and
   --generated scenes, at concurrency 8: pipeline_bls with device=cuda against the model
   fed the device path's own input on the same GPU (the DLPack hand-over under
   concurrency: an image read before its decode and resize finished answers wrongly), and
   the host path against its own reference.
3. The real model on the GPU: pipeline_bls (device=cuda) against the bare mask_rcnn at
   640x480, concurrency 1..16, in fp32 and under autocast fp16; fp16's answers against
   fp32's, judged on parity tolerances.
One table at the end; --json writes every number. Exit status 1 when a check fails.

Without a CUDA device it says so and exits 0. --allow-cpu runs the same steps on the CPU
(device=cpu, KIND_CPU, bfloat16 for fp16): a smoke run of this script, no GPU figures.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
from pycocotools import mask as mask_utils

from benchmarks import harness as h
from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MODEL_INPUT, MODEL_NAME, PIPELINE_NAME
from export.repository import assemble, parameters_override

# Parity tolerances: served against its in-process reference (the same input on the same
# device: only GPU kernels' float order differs), and fp16 against fp32.
# matched: the share of detections paired by box IoU >= 0.5 (of the larger count); classes:
# agreement among the pairs; box_px: their largest coordinate difference; mask_iou: their
# smallest (reference) or median (fp16) mask IoU.
REFERENCE = {"matched": 1.0, "classes": 1.0, "box_px": 0.5, "mask_iou": 0.99}
FP16 = {"matched": 0.9, "classes": 0.95, "box_px": float("inf"), "mask_iou": 0.9}
CONCURRENCY = (1, 2, 4, 8, 16)
OUTPUTS = ("boxes", "scores", "classes", "masks_rle", "image_size")


def parse_args(argv):
    p = h.parser("benchmarks.gpu_check", __doc__, "image", "size", "repository", "json")
    add = p.add_argument
    add("--generated", type=int, default=50, help="generated scenes besides the photos (50)")
    add("--requests", type=int, default=200, help="requests per throughput point (200)")
    add("--max-seconds", type=float, default=10, help="seconds per throughput point (10)")
    add("--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=list(CONCURRENCY))
    add("--precisions", type=lambda s: s.split(","), default=["fp32", "fp16"],
        help="fp32,fp16 (autocast)")
    add("--allow-cpu", action="store_true", help="without a GPU, run the steps on the CPU")
    add("--skip-tests", action="store_true", help="leave out step 1")
    return h.parse(p, argv, (lambda a: set(a.precisions) - {"fp32", "fp16"},
                             "--precisions: fp32 and/or fp16"))


def repository(model_file: Path, target: Path, device: str, precision: str) -> Path:
    """A repository serving mask_rcnn on ``device`` (its Python runner, KIND_GPU there) in
    ``precision``, and pipeline_bls with ``device`` ('' for the host path)."""
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    autocast = {"fp32": "none", "fp16": "float16" if kind == "KIND_GPU" else "bfloat16"}
    groups = f"instance_group [ {{ count: 1, kind: {kind} }} ]"
    return assemble(model_file, target, {
        MODEL_NAME: f"{groups} {parameters_override(autocast=autocast[precision])}",
        PIPELINE_NAME: f"{groups} {parameters_override(device=device)}" if device else groups})


def decode(rles, height, width) -> np.ndarray:
    if not len(rles):
        return np.zeros((0, height, width), bool)
    return mask_utils.decode([{"size": [height, width], "counts": c} for c in rles]
                             ).transpose(2, 0, 1).astype(bool)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [N, 4] with every box of b [M, 4] -> [N, M]."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def compare(got: dict, want: dict) -> dict:
    """Pair detections greedily by box IoU >= 0.5 (highest ``want`` score first): the share
    paired, class agreement, largest box difference (px), smallest and median mask IoU."""
    n, m = len(want["classes"]), len(got["classes"])
    pairs, used = [], set()
    ious = box_iou(want["boxes"].reshape(-1, 4), got["boxes"].reshape(-1, 4)) if n and m else None
    for i in range(n if m else 0):
        order = [j for j in np.argsort(-ious[i]) if j not in used and ious[i, j] >= 0.5]
        if order:
            used.add(order[0])
            pairs.append((i, order[0]))
    h_, w_ = (int(v) for v in want["image_size"])
    a = decode([want["masks_rle"][i] for i, _ in pairs], h_, w_)
    b = decode([got["masks_rle"][j] for _, j in pairs], h_, w_)
    union = (a | b).sum(axis=(1, 2))
    mask = (a & b).sum(axis=(1, 2))[union > 0] / union[union > 0]
    return {"detections": n, "matched": len(pairs) / max(n, m) if max(n, m) else 1.0,
            "classes": float(np.mean([want["classes"][i] == got["classes"][j]
                                      for i, j in pairs])) if pairs else 1.0,
            "box_px": float(max((np.abs(want["boxes"][i] - got["boxes"][j]).max()
                                 for i, j in pairs), default=0.0)),
            "mask_iou": float(mask.min(initial=1.0)),
            "mask_iou_median": float(np.median(mask)) if mask.size else 1.0}


def judge(rows: list[dict], tolerance: dict, median: bool = False) -> dict:
    """The worst of each figure over the images, and whether all are within ``tolerance``."""
    iou = "mask_iou_median" if median else "mask_iou"
    worst = {"matched": min((r["matched"] for r in rows), default=1.0),
             "classes": min((r["classes"] for r in rows), default=1.0),
             "box_px": max((r["box_px"] for r in rows), default=0.0),
             "mask_iou": min((r[iou] for r in rows), default=1.0), "images": len(rows)}
    worst["ok"] = bool(rows) and (worst["matched"] >= tolerance["matched"]
                                  and worst["classes"] >= tolerance["classes"]
                                  and worst["box_px"] <= tolerance["box_px"]
                                  and worst["mask_iou"] >= tolerance["mask_iou"])
    return worst


def describe(v: dict) -> str:
    return (f"paired >= {v['matched']:.3f}, classes >= {v['classes']:.3f}, box <= "
            f"{v['box_px']:.3g} px, mask IoU >= {v['mask_iou']:.4f}")


async def answers(url: str, images: list, concurrency: int) -> list[dict]:
    """pipeline_bls's answer to each image, ``concurrency`` requests at a time."""
    client, out = grpc_aio.InferenceServerClient(url), [None] * len(images)
    queue = list(enumerate(images))

    async def worker():
        while queue:
            k, image = queue.pop()
            result = await client.infer(PIPELINE_NAME, [h.make_input(grpc_aio, image.data, True)],
                                        parameters={"score_threshold": 0.0},
                                        client_timeout=h.REQUEST_TIMEOUT_S)
            out[k] = {name: result.as_numpy(name)[0] for name in OUTPUTS}

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return out


class Reference:
    """The in-process pipeline on ``device``: the strategy pipeline_bls uses there, and the
    TorchScript module on the same device."""

    def __init__(self, model_file: Path, meta, device: str, pipeline_device: str):
        import torch
        import torchvision  # noqa: F401  registers the ops the module calls

        from bls.pipeline.host import HOST
        from bls.pipeline.device import DeviceOps

        self.torch, self.meta = torch, meta
        self.device = torch.device(device)
        self.module = torch.jit.load(str(model_file), map_location=self.device)
        self.ops = DeviceOps(torch.device(pipeline_device)) if pipeline_device else HOST
        self.names = [s.name for s in meta.outputs]

    def __call__(self, data: bytes) -> dict:
        from bls.pipeline.steps import finish, prepare

        prepared = prepare(data, self.meta, ops=self.ops)
        model_input = self.torch.as_tensor(prepared.model_input).to(self.device)
        with self.torch.inference_mode():
            outputs = self.module(model_input)
        keep = self.ops.from_model if self.ops.device is not None else lambda t: t.cpu().numpy()
        answer = finish({n: keep(t) for n, t in zip(self.names, outputs)},
                        prepared.original_size, self.meta, RequestOptions(0.0), ops=self.ops)
        return {name: answer[name] for name in OUTPUTS}


async def throughput(server, inputs: dict, args) -> list[dict]:
    """Closed loops over gRPC, pipeline_bls and the bare model interleaved per level."""
    client, rows = grpc_aio.InferenceServerClient(server.grpc_url), []
    try:
        for model, tensors in inputs.items():  # warm-up
            await h.closed_loop(lambda k, w, m=model, t=tensors: client.infer(m, t), 2, 10, 60)
        for c in args.concurrency:
            for model, tensors in inputs.items():
                run = await h.closed_loop(
                    lambda k, w, m=model, t=tensors: client.infer(
                        m, t, client_timeout=h.REQUEST_TIMEOUT_S),
                    c, args.requests, args.max_seconds)
                s = h.summary(run["latencies"])
                rows.append({"model": model, "concurrency": c, "errors": sum(run["errors"].values()),
                             "throughput": len(run["latencies"]) / max(run["seconds"], 1e-9),
                             "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"]})
    finally:
        await client.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False): "
              "nothing to check on this machine; run it where there is a GPU "
              "(or --allow-cpu for a smoke run on the CPU)")
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started, checks, report = time.perf_counter(), [], {}
    with h.session("benchmarks.gpu_check", argv, args) as run:
        if device == "cuda":
            report["gpu"] = torch.cuda.get_device_name(0)
        if not args.skip_tests:
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "tests/test_device.py"], cwd=h.ROOT, capture_output=True,
                                  text=True)
            tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
            report["cuda_tests"] = {"status": done.returncode, "summary": tail}
            checks.append(("CUDA tests (tests/test_device.py)", tail, done.returncode == 0))
            print(f"\n== 1. CUDA tests: {tail}", flush=True)

        model_file, meta = h.model_file(run.repo.path), run.repo.meta
        images = h.images(args.image, [], default=()) + [
            h.Image(f"scene {k}", h.scene(int(w), int(hh), seed=k))
            for k, (w, hh) in enumerate([(640, 480), (480, 640), (320, 240), (1280, 720),
                                         (500, 375)] * (args.generated // 5 + 1))][:args.generated]
        for label, pipeline_device in ((f"device={device}", device), ("host path", "")):
            slug = pipeline_device or "host"  # no spaces: the stub's arguments split on them
            repo = repository(model_file, run.scratch / f"repo-{slug}", pipeline_device, "fp32")
            reference = Reference(model_file, meta, device, pipeline_device)
            with h.serve(repo, run.scratch / f"triton-{slug}.log") as server:
                served = asyncio.run(answers(server.grpc_url, images, 8))
            rows = [compare(got, reference(image.data)) for got, image in zip(served, images)]
            verdict = judge(rows, REFERENCE)
            report[f"parity {label}"] = {"per_image": rows, **verdict}
            checks.append((f"served pipeline_bls {label} vs in-process, {len(images)} images, "
                           f"c=8", describe(verdict), verdict["ok"]))
            print(f"\n== 2. {checks[-1][0]}: {checks[-1][1]}", flush=True)

        from bls.pipeline.steps import prepare

        scene = h.scene(640, 480, seed=99)
        inputs = {PIPELINE_NAME: [h.make_input(grpcclient, scene, True)],
                  MODEL_NAME: [h.tensor_input(grpcclient, MODEL_INPUT.name,
                                              prepare(scene, meta).model_input)]}
        speed, by_precision = [], {}
        for precision in args.precisions:
            repo = repository(model_file, run.scratch / f"repo-{precision}", device, precision)
            with h.serve(repo, run.scratch / f"triton-{precision}.log") as server:
                rows = asyncio.run(throughput(server, inputs, args))
                by_precision[precision] = asyncio.run(answers(server.grpc_url, images, 8))
            speed += [r | {"precision": precision} for r in rows]
            print(f"\n== 3. {precision}: measured", flush=True)
        report["throughput"] = speed
        if {"fp32", "fp16"} <= set(by_precision):
            rows = [compare(a, b) for a, b in zip(by_precision["fp16"], by_precision["fp32"])]
            verdict = judge(rows, FP16, median=True)
            report["parity fp16 vs fp32"] = {"per_image": rows, **verdict}
            checks.append((f"{'fp16' if device == 'cuda' else 'bf16'} (autocast) vs fp32 "
                           f"answers, median mask IoU", describe(verdict), verdict["ok"]))

    print(f"\n== GPU check on {report.get('gpu', 'the CPU (--allow-cpu: no GPU figures)')}, "
          f"{time.perf_counter() - started:.0f} s")
    print(h.table(["check", "result", "verdict"],
                  [[name, result, "PASS" if ok else "FAIL"] for name, result, ok in checks]))
    by_key = {(r["precision"], r["model"], r["concurrency"]): r for r in speed}
    print("\n  640x480, closed-loop gRPC, img/s (p50 ms); pipeline_bls with device="
          f"{device} against the bare mask_rcnn")
    print(h.table(["precision", "conc", PIPELINE_NAME, "bare mask_rcnn", "bls / bare"], [
        [p, c, f"{b['throughput']:.1f} ({b['p50_ms']:.1f})",
         f"{m['throughput']:.1f} ({m['p50_ms']:.1f})",
         f"{b['throughput'] / m['throughput']:.2f}" if m["throughput"] else "-"]
        for p in args.precisions for c in args.concurrency
        if (b := by_key.get((p, PIPELINE_NAME, c))) and (m := by_key.get((p, MODEL_NAME, c)))]))
    errors = sum(r["errors"] for r in speed)
    if errors:
        checks.append(("throughput points without errors", f"{errors} errors", False))
        print(f"  {errors} requests failed during the throughput points")
    report["checks"] = [{"check": n, "result": r, "ok": ok} for n, r, ok in checks]
    h.write_json(args.json, report | {"command": run.command, "machine": run.machine})
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    h.run_main(main)
