"""python -m benchmarks.stages: 1. one request's stages in process (decode, resize, model, postprocess,
paste + RLE, response); 2. served, paired per iteration, the remainder split (gRPC + client, BLS IPC, the
mask_rcnn hop, pipeline_bls's own); 3. model-call variants, outputs compared. Details: docs/benchmarks.md.

  python -m benchmarks.stages --repository build/repository --image photo.jpg --repeats 5
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import harness as h
from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MODEL_INPUT, MODEL_NAME, PIPELINE_NAME, MaskFormat
from bls.pipeline import image as image_ops
from bls.pipeline import masks as mask_ops
from bls.pipeline.answer import build_answer
from bls.pipeline.instances import from_model_outputs, rescale, select
from client.metrics import scrape

STAGES = {"decode": "decode", "resize": "resize", "model": "model", "postprocess": "postproc",
          "paste_rle": "paste+RLE", "response": "response"}

def load_module(path: Path, build=lambda m: m):
    import torch
    import torchvision  # noqa: F401  registers the ops the file calls

    return build(torch.jit.load(str(path), map_location="cpu").eval())

def run_model(module, model_input: np.ndarray, names: list[str], grad: str = "inference") -> dict:
    """uint8 [3, H, W] -> the model's outputs by name, under inference_mode or no_grad."""
    import torch

    with torch.inference_mode() if grad == "inference" else torch.no_grad():
        return {n: t.numpy() for n, t in zip(names, module(torch.from_numpy(model_input)))}

def one_pass(image: h.Image, module, meta) -> tuple[dict[str, float], dict]:
    """The pipeline once, in process: seconds per stage, and what it saw."""
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
    det = rescale(select(det, meta.score_threshold,
                                                 RequestOptions(meta.score_threshold).max_detections),
                              input_size, (height, width))
    t.append(time.perf_counter())
    if det.masks is not None and len(det):
        mask_ops.encode_rle(det.masks, det.boxes, height, width)
    t.append(time.perf_counter())
    build_answer(det, (height, width), meta, MaskFormat.NONE)
    t.append(time.perf_counter())
    return ({s: b - a for s, a, b in zip(STAGES, t, t[1:])},
            {"original_size": [height, width], "model_input_size": [new_h, new_w],
             "detections": len(det), "model_input": model_input})

def profile_image(image: h.Image, module, meta, repeats: int, warmup: int) -> dict:
    """Median ms of each stage for one image."""
    runs = [one_pass(image, module, meta) for _ in range(warmup + repeats)][warmup:]
    medians = {s: h.summary([r[0][s] for r in runs])["median_ms"] for s in STAGES}
    return {**runs[-1][1], "median_ms": medians, "sum_ms": sum(medians.values()),
            "samples_ms": {s: [r[0][s] * 1000 for r in runs] for s in STAGES}}

async def served(server, images: list[h.Image], module, meta, repeats: int, warmup: int) -> dict:
    """Per iteration, order rotated: the pipeline in process (server idle), pipeline_bls
    and the bare mask_rcnn over gRPC with Triton's statistics around each; the split is
    taken per iteration (paired), medians reported."""
    import tritonclient.grpc.aio as grpc_aio

    client = grpc_aio.InferenceServerClient(server.grpc_url)
    results = {}
    try:
        batch = (await client.get_model_config(PIPELINE_NAME)).config.max_batch_size > 0
        for image in images:
            model_input = one_pass(image, module, meta)[1]["model_input"]
            targets = {"bls": (PIPELINE_NAME, [h.make_input(grpc_aio, image.data, batch)]),
                       "bare": (MODEL_NAME, [h.tensor_input(grpc_aio, MODEL_INPUT.name, model_input)])}
            rows, row = [], {}
            for timed, step in h.rounds(["in_process", *targets], repeats, warmup, f"served {image.name}"):
                if step == "in_process":
                    times, _ = one_pass(image, module, meta)
                    row |= {"in_process_sum": sum(times.values()), "in_process_model": times["model"]}
                else:
                    model, inputs = targets[step]
                    before = h.model_statistics(await client.get_inference_statistics())
                    scraped = scrape(server.metrics_url) if step == "bls" else None
                    start = time.perf_counter()
                    await client.infer(model, inputs, client_timeout=h.REQUEST_TIMEOUT_S)
                    row[f"{step}_client"] = time.perf_counter() - start
                    after = await h.settled_statistics(client, model, h.answered(before, model) + 1)
                    d = h.statistics_delta(before, after, (MODEL_NAME, PIPELINE_NAME))
                    row[f"{step}_rcnn_server"] = (d[MODEL_NAME]["queue_ms"] + d[MODEL_NAME]["compute_ms"]) / 1000
                    if step == "bls":  # its own stage times: Triton's end when execute returns
                        stages = h.stage_means(scraped, scrape(server.metrics_url))
                        row["bls_call"] = stages["model_ms"] / 1000
                        row["bls_server"] = d[PIPELINE_NAME]["queue_ms"] / 1000 + stages["total_ms"] / 1000
                if len(row) == 8:
                    rows += [row] if timed else []
                    row = {}
            paired = {k: [f(r) for r in rows] for k, f in {
                "served_bls": lambda r: r["bls_client"],
                "in_process_sum": lambda r: r["in_process_sum"],
                "ipc_scheduling": lambda r: r["bls_client"] - r["in_process_sum"],
                "grpc_and_client": lambda r: r["bls_client"] - r["bls_server"],
                "mask_rcnn_hop": lambda r: r["bls_rcnn_server"] - r["in_process_model"],
                "bls_call_ipc": lambda r: r["bls_call"] - r["bls_rcnn_server"],
                "pipeline_bls_own": lambda r: (r["bls_server"] - r["bls_call"]
                                               - (r["in_process_sum"] - r["in_process_model"])),
                "served_bare": lambda r: r["bare_client"],
                "bare_minus_model": lambda r: r["bare_client"] - r["in_process_model"],
                "bare_grpc": lambda r: r["bare_client"] - r["bare_rcnn_server"]}.items()}
            results[image.name] = {k: h.summary(v)["median_ms"] for k, v in paired.items()} | {
                "samples_ms": {k: [x * 1000 for x in v] for k, v in paired.items()}}
    finally:
        await client.close()
    return results

def compare_outputs(reference: dict, other: dict, meta) -> dict:
    """Max |difference| per output field (export.verify.compare), and identical / within tolerance / DIFFERENT."""
    import torch

    from export.verify import compare

    diffs = compare(*([torch.from_numpy(o[s.name]) for s in meta.outputs] for o in (reference, other)), meta.outputs)
    return {"max_abs": {d.name.rsplit("__", 1)[0]: d.max_abs for d in diffs}, "verdict": "identical" if not any(
        d.max_abs for d in diffs) else "within tolerance" if all(d.ok for d in diffs) else "DIFFERENT"}

def bench_variants(path: Path, meta, model_input: np.ndarray, threads: list[int], repeats: int,
                   warmup: int) -> dict:
    """Each variant freshly loaded, warmed up, then timed interleaved."""
    import torch

    names, default = [s.name for s in meta.outputs], torch.get_num_threads()
    baseline = f"inference_mode (runner today), {default} threads"
    specs = {baseline: (None, "inference", default), "no_grad": (None, "no_grad", default),
             "channels_last weights": (lambda m: m.to(memory_format=torch.channels_last), "inference", default),
             "torch.jit.freeze": (torch.jit.freeze, "inference", default),
             "freeze + optimize_for_inference": (lambda m: torch.jit.optimize_for_inference(
                 torch.jit.freeze(m)), "inference", default)}
    specs |= {f"intra-op threads {n}": (None, "inference", n) for n in threads if n != default}
    built, results = {}, {}

    def call(name: str) -> dict:
        torch.set_num_threads(specs[name][2])
        try:
            return run_model(built[name], model_input, names, specs[name][1])
        finally:
            torch.set_num_threads(default)

    for name, (build, _, _) in specs.items():
        try:
            start = time.perf_counter()
            built[name] = load_module(path, build or (lambda m: m))
            outputs = [call(name) for _ in range(warmup)][-1] if warmup else call(name)
            results[name] = {"build_and_warmup_s": time.perf_counter() - start, "samples": [],
                             "first": outputs}
        except Exception as e:  # a transformation this module does not survive
            built.pop(name, None)
            results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(f"  variant {name}: {'built and warmed up' if name in built else 'FAILED'}", flush=True)
    for _, name in h.rounds(list(built), repeats, 0, "variants"):
        gc.collect()
        seconds, results[name]["last"] = h.timed(call, name)
        results[name]["samples"].append(seconds)
    base_ms = h.summary(results[baseline]["samples"])["median_ms"]
    report = {}
    for name, r in results.items():
        if "error" in r:
            report[name] = {"error": r["error"]}
            continue
        s = h.summary(r["samples"], keep=True)
        report[name] = {"median_ms": s["median_ms"], "min_ms": s["min_ms"],
                        "vs_baseline": s["median_ms"] / base_ms - 1, "threads": specs[name][2],
                        "samples_ms": s["samples_ms"], "build_and_warmup_s": r["build_and_warmup_s"],
                        "outputs": compare_outputs(results[baseline]["first"], r["last"], meta)}
    return {"baseline": baseline, "variants": report, "model_input_size": list(model_input.shape[1:])}

def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.stages", __doc__, "repository", "size", "image", "generated", "json")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--threads", default="", help="intra-op thread counts to try (default 1..CPUs)")
    p.add_argument("--skip-server", action="store_true", help="no section 2")
    p.add_argument("--skip-variants", action="store_true", help="no section 3")
    args = h.parse(p, argv, (lambda a: a.repeats < 1 or a.warmup < 0, "need --repeats >= 1 and --warmup >= 0"),
                   (lambda a: not all(v.strip().isdigit() and int(v) >= 1 for v in a.threads.split(",")
                                      if v.strip()), "--threads: expected comma-separated counts >= 1"))
    with h.session("benchmarks.stages", argv, args) as run:
        images = h.images(args.image, args.generated, ("640x480", "3361x2521"))
        threads = [int(v) for v in args.threads.split(",") if v.strip()] or list(range(1, run.machine["usable_cpus"] + 1))
        meta, path, report = run.repo.meta, h.model_file(run.repo.path), {"command": run.command, "machine": run.machine}
        print("".join(f"note: {note}\n" for note in run.repo.notes) + f"model: {meta.source}, {meta.weights or 'weights ?'}"
              f", resize shortest edge {meta.min_size}, longest <= {meta.max_size}; {meta.extra}; file {path}", flush=True)
        module = load_module(path)
        profiles = {i.name: profile_image(i, module, meta, args.repeats, args.warmup) for i in images}
        print(f"\n== 1. Stages in process: median ms of {args.repeats} after {args.warmup} warm-up (torch "
              f"{run.machine['torch_threads']} threads, inference_mode as the runner; dets: kept at the export's score "
              f"threshold {meta.score_threshold})")
        print(h.table(["image", "size->input", "dets", *STAGES.values(), "sum", "model share"], [
            [name, "{1}x{0}->{3}x{2}".format(*p["original_size"], *p["model_input_size"]), p["detections"],
             *(f"{p['median_ms'][s]:.1f}" for s in STAGES), f"{p['sum_ms']:.1f}",
             f"{100 * p['median_ms']['model'] / p['sum_ms']:.1f} %"] for name, p in profiles.items()], 2))
        report["in_process"] = {n: {k: v for k, v in p.items() if k != "model_input"} for n, p in profiles.items()}
        if not args.skip_variants:  # before the server: never both at once
            report["variants"] = v = bench_variants(path, meta, profiles[images[0].name]["model_input"], threads,
                                                    args.repeats, args.warmup)
        gc.collect()
        if not args.skip_server:
            with h.serve(run.repo.path, run.scratch / "triton.log") as server:
                report["served"] = asyncio.run(served(server, images, module, meta, args.repeats, args.warmup))
            print(f"\n== 2. Served vs in process, paired: per iteration the pipeline in process (server idle), then "
                  f"pipeline_bls and the bare model over sequential gRPC, order rotated;\n   medians of the "
                  f"per-iteration values over {args.repeats} iterations, ms (docs/benchmarks.md explains the split)")
            print(h.table(["image", "served bls", "in-process sum", "IPC/scheduling", "share", "gRPC+client", "BLS IPC",
                           "mask_rcnn hop", "bls own", "served bare", "bare gRPC"], [[name] + [
                f"{100 * r['ipc_scheduling'] / r['served_bls']:.1f} %" if k == "share" else f"{r[k]:.1f}" for k in (
                    "served_bls", "in_process_sum", "ipc_scheduling", "share", "grpc_and_client", "bls_call_ipc",
                    "mask_rcnn_hop", "pipeline_bls_own", "served_bare", "bare_grpc")]
                for name, r in report["served"].items()]))
    if not args.skip_variants:
        print(f"\n== 3. Model-call variants on {images[0].name}'s model input {v['model_input_size'][1]}x"
              f"{v['model_input_size'][0]}: median ms of {args.repeats}, interleaved, each after {args.warmup} warm-up "
              f"runs (tolerances: export/verify.py; the baseline row: its last answer against its first)")
        print(h.table(["variant", "median ms", "min ms", "vs baseline", "outputs vs baseline's first answer (max |diff|)"],
                      [[name, "-", "-", "-", f"FAILED: {r['error']}"] if "error" in r else [
                          name, f"{r['median_ms']:.0f}", f"{r['min_ms']:.0f}", "baseline" if name == v["baseline"] else
                          f"{r['vs_baseline']:+.1%}", f"{r['outputs']['verdict']} (" + ", ".join(
                              f"{k} {r['outputs']['max_abs'][k]:.2g}" for k in ("boxes", "scores", "masks")
                              if k in r["outputs"]["max_abs"]) + ")"] for name, r in v["variants"].items()]))
    report["loadavg_end"] = os.getloadavg()
    print(f"\nload average at end: {h.loadavg()}")
    h.write_json(args.json, report)
    return 0

if __name__ == "__main__":
    h.run_main(main)
