"""python -m benchmarks.stages: where one request's time goes, stage by stage, and which
model-call variants help on this CPU.

  python -m benchmarks.stages --repository build/bench/repository \\
      --image build/bench/vulture_640x480.jpg --image mug.jpg --repeats 5
  python -m benchmarks.stages --min-size 800 --generated 640x480 --skip-server

1. In process (median of --repeats, after a warm-up), per image, the same functions
   pipeline_bls runs: decode (bls.pipeline.image.decode_image), resize (resized_shape,
   resize_image, to_model_input), model (the repository's TorchScript file, as the runner
   calls it: torch.inference_mode, DLPack-free numpy in), postprocess (from the model's
   outputs: score threshold, rescale), paste + RLE encode (bls.pipeline.masks.encode_rle), response
   building (the output arrays and class names: postprocess.answer without masks).
2. Served (one embedded server on the same repository), paired: per iteration, in an
   order rotated each time, the pipeline in process (the server idle meanwhile),
   pipeline_bls (bytes) and the bare mask_rcnn (the resized tensor) over sequential gRPC;
   medians of the per-iteration values, so machine drift hits both sides alike. The
   served pipeline_bls latency minus the in-process sum is "IPC/scheduling", split with
   Triton's statistics and pipeline_bls's own metrics (bls/backend/metrics.py; Triton's statistics
   for pipeline_bls end when its execute returns) into gRPC + client (client latency -
   pipeline_bls's queue and request time), the BLS IPC (its mask_rcnn call - mask_rcnn's
   queue+compute), the mask_rcnn hop (mask_rcnn's queue+compute as Triton saw it - the
   in-process model time: the runner's stub and transfers) and pipeline_bls's own
   overhead (the rest: its queue, worker-thread hops, batching delay).
3. Variants of the model call on the first image's model input, each on a freshly loaded
   module, warmed up, timed interleaved: torch.inference_mode (the runner's today),
   torch.no_grad, channels_last weights, torch.jit.freeze, torch.jit.optimize_for_inference
   (frozen), and intra-op thread counts (--threads). Each variant's outputs are compared with
   the baseline's: identical, within the export's tolerances (export/verify.py), or
   different. Nothing here changes the runner or the export; it only measures.

The server starts after sections 1 and 3; in section 2 it is idle while the in-process
pass runs (never both at work at once).
Numbers from a shared or loaded machine are noise: the load average is printed.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.pipeline import (REQUEST_TIMEOUT_S, BenchImage, check_images, grpc_bytes_input,
                                 load_images, model_file, prepare_repository, rotated, begin,
                                 run_main, table, write_json)
from benchmarks.sweep import answered, generated_images, model_statistics, stage_means
from client.metrics import scrape
from bls.pipeline import image as image_ops
from bls.pipeline import masks as mask_ops
from bls.pipeline import instances
from bls.contract.tensors import MODEL_INPUT, MODEL_NAME, PIPELINE_NAME, MaskFormat
from bls.contract.parameters import RequestOptions

STAGES = ("decode", "resize", "model", "postprocess", "paste_rle", "response")
STAGE_LABELS = {"decode": "decode", "resize": "resize", "model": "model",
                "postprocess": "postproc", "paste_rle": "paste+RLE", "response": "response"}


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


# --------------------------------------------------------------------------- 1. in process
def load_module(path: Path):
    import torch
    import torchvision  # noqa: F401  registers the ops the file calls

    return torch.jit.load(str(path), map_location="cpu").eval()


def run_model(module, model_input: np.ndarray, names: list[str], grad_mode: str = "inference"):
    import torch

    context = torch.inference_mode() if grad_mode == "inference" else torch.no_grad()
    with context:
        outputs = module(torch.from_numpy(model_input))
    return {n: t.numpy() for n, t in zip(names, outputs)}


def one_pass(image: BenchImage, module, meta) -> tuple[dict[str, float], dict]:
    """The pipeline once, in process: seconds per stage, and what it saw."""
    names = [s.name for s in meta.outputs]
    options = RequestOptions(meta.score_threshold)
    gc.collect()
    t0 = time.perf_counter()
    decoded = image_ops.decode_image(image.data, meta.channel_order, image_ops.DecodeLimits())
    t1 = time.perf_counter()
    height, width = decoded.shape[:2]
    new_h, new_w = image_ops.resized_shape(height, width, meta.min_size, meta.max_size)
    model_input = image_ops.to_model_input(image_ops.resize_image(decoded, new_h, new_w))
    t2 = time.perf_counter()
    outputs = run_model(module, model_input, names)
    t3 = time.perf_counter()
    det, input_size = postprocess.from_model_outputs(outputs, meta)
    det = postprocess.select(det, options.score_threshold, options.max_detections)
    det = postprocess.rescale(det, input_size, (height, width))
    t4 = time.perf_counter()
    rle = (mask_ops.encode_rle(det.masks, det.boxes, height, width)
           if det.masks is not None and len(det) else [])
    t5 = time.perf_counter()
    postprocess.answer(det, (height, width), meta, MaskFormat.NONE)
    t6 = time.perf_counter()
    del rle
    times = {stage: b - a for stage, (a, b) in zip(
        STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6)))}
    info = {"original_size": [height, width], "model_input_size": [new_h, new_w],
            "detections": len(det), "model_input": model_input}
    return times, info


def profile_image(image: BenchImage, module, meta, repeats: int, warmup: int) -> dict:
    """Median of each stage for one image, the stages run in pipeline order."""
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    info = {}
    for i in range(warmup + repeats):
        times, info = one_pass(image, module, meta)
        if i >= warmup:
            for stage, t in times.items():
                samples[stage].append(t)
    medians = {s: median_ms(v) for s, v in samples.items()}
    return {**info, "median_ms": medians, "sum_ms": sum(medians.values()),
            "samples_ms": {s: [x * 1000 for x in v] for s, v in samples.items()}}


# --------------------------------------------------------------------------- 2. served
def settled_statistics(client, model: str, expected: float, timeout: float = 5.0) -> dict:
    """Triton's statistics once they count ``expected`` requests of ``model``: it records
    a request when it is released, which can be just after the client has its answer."""
    deadline = time.monotonic() + timeout
    while True:
        stats = model_statistics(client.get_inference_statistics())
        if answered(stats, model) >= expected or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def served(server, images: list[BenchImage], module, meta, repeats: int, warmup: int) -> dict:
    """Per iteration, in an order rotated each time: the pipeline in process (the server
    idle meanwhile), pipeline_bls (bytes) and the bare mask_rcnn (tensor) over sequential
    gRPC, with Triton's statistics before and after each request. The remainder is taken
    per iteration (paired), so machine drift hits both sides alike."""
    import tritonclient.grpc as grpcclient

    results = {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        bls_batch = [1] if client.get_model_config(PIPELINE_NAME).config.max_batch_size > 0 else []
        for image in images:
            _, info = one_pass(image, module, meta)
            model_input = info["model_input"]
            bare = grpcclient.InferInput(MODEL_INPUT.name, list(model_input.shape),
                                         MODEL_INPUT.dtype)
            bare.set_data_from_numpy(model_input)
            targets = {"bls": (PIPELINE_NAME, [grpc_bytes_input(grpcclient, image.data,
                                                                bls_batch)]),
                       "bare": (MODEL_NAME, [bare])}
            rows = []
            for i in range(warmup + repeats):
                row = {}
                for step in rotated(["in_process", *targets], i):
                    if step == "in_process":
                        times, _ = one_pass(image, module, meta)
                        row["in_process_sum"] = sum(times.values())
                        row["in_process_model"] = times["model"]
                        continue
                    model, inputs = targets[step]
                    before = model_statistics(client.get_inference_statistics())
                    scraped = scrape(server.metrics_url) if step == "bls" else None
                    start = time.perf_counter()
                    client.infer(model, inputs, client_timeout=REQUEST_TIMEOUT_S)
                    row[f"{step}_client"] = time.perf_counter() - start
                    after = settled_statistics(client, model, answered(before, model) + 1)

                    def delta_s(m, key):
                        return (after.get(m, {}).get(key, 0) - before.get(m, {}).get(key, 0)) / 1e9

                    row[f"{step}_rcnn_server"] = (delta_s(MODEL_NAME, "queue_ns")
                                                  + delta_s(MODEL_NAME, "compute_ns"))
                    if step == "bls":
                        # pipeline_bls's own stage times (bls/backend/metrics.py): Triton's statistics
                        # for it end when its execute returns, before the answer is sent.
                        stages = stage_means(scraped, scrape(server.metrics_url))
                        row["bls_call"] = stages["model_ms"] / 1000
                        # Its queue, then its request task (execute's own time lies within).
                        row["bls_server"] = (delta_s(PIPELINE_NAME, "queue_ns")
                                             + stages["total_ms"] / 1000)
                if i >= warmup:
                    rows.append(row)
                print(f"  served {image.name}: iteration {i + 1}/{warmup + repeats}"
                      f"{' (warm-up)' if i < warmup else ''}", file=sys.stderr, flush=True)
            paired = {
                "served_bls": [r["bls_client"] for r in rows],
                "in_process_sum": [r["in_process_sum"] for r in rows],
                "ipc_scheduling": [r["bls_client"] - r["in_process_sum"] for r in rows],
                "grpc_and_client": [r["bls_client"] - r["bls_server"] for r in rows],
                "mask_rcnn_hop": [r["bls_rcnn_server"] - r["in_process_model"] for r in rows],
                "bls_call_ipc": [r["bls_call"] - r["bls_rcnn_server"] for r in rows],
                "pipeline_bls_own": [r["bls_server"] - r["bls_call"]
                                     - (r["in_process_sum"] - r["in_process_model"])
                                     for r in rows],
                "served_bare": [r["bare_client"] for r in rows],
                "bare_minus_model": [r["bare_client"] - r["in_process_model"] for r in rows],
                "bare_grpc": [r["bare_client"] - r["bare_rcnn_server"] for r in rows],
            }
            results[image.name] = {k: median_ms(v) for k, v in paired.items()}
            results[image.name]["samples_ms"] = {k: [x * 1000 for x in v]
                                                 for k, v in paired.items()}
    return results


# --------------------------------------------------------------------------- 3. variants
def variants(path: Path, threads: list[int]) -> dict[str, dict]:
    """name -> how to build the module and call it."""
    import torch

    default_threads = torch.get_num_threads()

    def plain():
        return load_module(path)

    def channels_last():
        return load_module(path).to(memory_format=torch.channels_last)

    def frozen():
        return torch.jit.freeze(load_module(path))

    def optimized():
        return torch.jit.optimize_for_inference(torch.jit.freeze(load_module(path)))

    out = {
        f"inference_mode (runner today), {default_threads} threads":
            {"build": plain, "grad": "inference", "threads": default_threads, "baseline": True},
        "no_grad": {"build": plain, "grad": "no_grad", "threads": default_threads},
        "channels_last weights": {"build": channels_last, "grad": "inference",
                                  "threads": default_threads},
        "torch.jit.freeze": {"build": frozen, "grad": "inference", "threads": default_threads},
        "freeze + optimize_for_inference": {"build": optimized, "grad": "inference",
                                            "threads": default_threads},
    }
    for n in threads:
        if n != default_threads:
            out[f"intra-op threads {n}"] = {"build": plain, "grad": "inference", "threads": n}
    return out


def compare_outputs(reference: dict[str, np.ndarray], other: dict[str, np.ndarray], meta) -> dict:
    from export.verify import TOLERANCES

    worst = {}
    same = within = True
    for spec in meta.outputs:
        a, b = reference[spec.name], other[spec.name]
        field = spec.name.rsplit("__", 1)[0]
        if a.shape != b.shape:
            worst[field] = float("inf")
            same = within = False
            continue
        d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
        worst[field] = d
        same = same and d == 0.0
        within = within and d <= TOLERANCES[field]
    verdict = "identical" if same else ("within tolerance" if within else "DIFFERENT")
    return {"max_abs": worst, "verdict": verdict}


def bench_variants(path: Path, meta, model_input: np.ndarray, threads: list[int], repeats: int,
                   warmup: int) -> dict:
    import torch

    names = [s.name for s in meta.outputs]
    default_threads = torch.get_num_threads()
    specs = variants(path, threads)
    built, results = {}, {}
    for name, spec in specs.items():
        try:
            start = time.perf_counter()
            module = spec["build"]()
            torch.set_num_threads(spec["threads"])
            for _ in range(warmup):
                outputs = run_model(module, model_input, names, spec["grad"])
            built[name] = module
            results[name] = {"build_and_warmup_s": time.perf_counter() - start, "samples": [],
                             "outputs": outputs}
        except Exception as e:  # a transformation this module does not survive
            results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        finally:
            torch.set_num_threads(default_threads)
        print(f"  variant {name}: {'built and warmed up' if name in built else 'FAILED'}",
              file=sys.stderr, flush=True)
    order = list(built)
    for rep in range(repeats):
        for name in rotated(order, rep):
            spec = specs[name]
            torch.set_num_threads(spec["threads"])
            try:
                gc.collect()
                start = time.perf_counter()
                outputs = run_model(built[name], model_input, names, spec["grad"])
                results[name]["samples"].append(time.perf_counter() - start)
                results[name]["last_outputs"] = outputs
            finally:
                torch.set_num_threads(default_threads)
        print(f"  variants: repetition {rep + 1}/{repeats}", file=sys.stderr, flush=True)
    baseline = next(n for n, s in specs.items() if s.get("baseline"))
    reference = results[baseline]["outputs"]  # the baseline's first warmed-up answer
    base_ms = median_ms(results[baseline]["samples"])
    report = {}
    for name, r in results.items():
        if "error" in r:
            report[name] = {"error": r["error"]}
            continue
        ms = median_ms(r["samples"])
        report[name] = {"median_ms": ms, "min_ms": min(r["samples"]) * 1000,
                        "vs_baseline": ms / base_ms - 1, "threads": specs[name]["threads"],
                        "samples_ms": [s * 1000 for s in r["samples"]],
                        "build_and_warmup_s": r["build_and_warmup_s"],
                        "outputs": compare_outputs(reference, r["last_outputs"], meta)}
    return {"baseline": baseline, "variants": report,
            "model_input_size": list(model_input.shape[1:])}


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path,
                   help="an exported repository (used as it is); a new or empty folder is "
                        "exported into and kept. Default: export into a scratch folder")
    p.add_argument("--min-size", type=int, help="export: shortest edge (default 800)")
    p.add_argument("--max-size", type=int, help="export: longest edge at most (default 1333)")
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="image to profile (repeatable)")
    p.add_argument("--generated", action="append", default=[], metavar="WxH",
                   help="also a generated JPEG scene of this size (repeatable); default "
                        "640x480 and 3361x2521 when no --image is given")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed runs first (TorchScript optimises on the first runs; default 2)")
    p.add_argument("--threads", default="",
                   help="intra-op thread counts to try besides torch's default (default: "
                        "1..usable CPUs)")
    p.add_argument("--skip-server", action="store_true", help="no section 2")
    p.add_argument("--skip-variants", action="store_true", help="no section 3")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("need --repeats >= 1 and --warmup >= 0")
    check_images(p, args.image)
    try:
        args.thread_counts = [int(v) for v in args.threads.split(",") if v.strip()]
    except ValueError:
        p.error(f"--threads {args.threads}: expected comma-separated numbers")
    if any(n < 1 for n in args.thread_counts):
        p.error("--threads: counts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command, machine = begin("benchmarks.stages", argv)
    images = load_images(args.image) if args.image else []
    images += generated_images(args.generated or ([] if args.image else ["640x480", "3361x2521"]))
    threads = args.thread_counts or list(range(1, machine["usable_cpus"] + 1))
    report = {"command": command, "machine": machine}
    scratch = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    try:
        repo = prepare_repository(args, scratch)
        meta = repo.meta
        for note in repo.notes:
            print(f"note: {note}")
        print(f"model: {meta.source}, {meta.weights or 'weights ?'}, resize shortest edge "
              f"{meta.min_size}, longest <= {meta.max_size}; {meta.extra}; file "
              f"{model_file(repo.path)}", flush=True)

        # 1. in process
        module = load_module(model_file(repo.path))
        profiles = {}
        for image in images:
            profiles[image.name] = profile_image(image, module, meta, args.repeats, args.warmup)
            print(f"  in process {image.name}: done", file=sys.stderr, flush=True)
        print(f"\n== 1. Stages in process: median ms of {args.repeats} after {args.warmup} "
              f"warm-up (torch {machine['torch_threads']} threads, inference_mode as the runner)")
        rows = []
        for name, prof in profiles.items():
            h, w = prof["original_size"]
            mh, mw = prof["model_input_size"]
            m = prof["median_ms"]
            rows.append([name, f"{w}x{h}->{mw}x{mh}", prof["detections"],
                         *(f"{m[s]:.1f}" for s in STAGES), f"{prof['sum_ms']:.1f}",
                         f"{100 * m['model'] / prof['sum_ms']:.1f} %"])
        print(table(["image", "size->input", "dets", *(STAGE_LABELS[s] for s in STAGES),
                     "sum", "model share"], rows, left=2))
        print(f"  dets: kept at the export's score threshold {meta.score_threshold} (the "
              f"pasted and encoded ones)")
        report["in_process"] = {n: {k: v for k, v in p.items() if k != "model_input"}
                                for n, p in profiles.items()}

        # 3. variants (before the server: never both at once)
        if not args.skip_variants:
            first = images[0].name
            variants_report = bench_variants(model_file(repo.path), meta,
                                             profiles[first]["model_input"], threads,
                                             args.repeats, args.warmup)
            report["variants"] = variants_report
        gc.collect()

        # 2. served
        if not args.skip_server:
            from server.launcher import TritonServer

            with TritonServer(repo.path, log=scratch / "triton.log") as server:
                print("  server ready", file=sys.stderr, flush=True)
                report["served"] = served(server, images, module, meta, args.repeats,
                                          args.warmup)
            print(f"\n== 2. Served vs in process, paired: per iteration the pipeline in process "
                  f"(server idle), then pipeline_bls and the bare model over sequential gRPC, "
                  f"order rotated;\n   medians of the per-iteration values over {args.repeats} "
                  f"iterations, ms (same repository, its own config)")
            rows = []
            for name, r in report["served"].items():
                rows.append([name, f"{r['served_bls']:.1f}", f"{r['in_process_sum']:.1f}",
                             f"{r['ipc_scheduling']:.1f}",
                             f"{100 * r['ipc_scheduling'] / r['served_bls']:.1f} %",
                             f"{r['grpc_and_client']:.1f}", f"{r['bls_call_ipc']:.1f}",
                             f"{r['mask_rcnn_hop']:.1f}",
                             f"{r['pipeline_bls_own']:.1f}", f"{r['served_bare']:.1f}",
                             f"{r['bare_grpc']:.1f}"])
            print(table(["image", "served bls", "in-process sum", "IPC/scheduling", "share",
                         "gRPC+client", "BLS IPC", "mask_rcnn hop", "bls own", "served bare",
                         "bare gRPC"], rows))
            print("  IPC/scheduling = served pipeline_bls - in-process sum, of which: gRPC+client "
                  "= client latency - (pipeline_bls queue (Triton) + its request time\n  "
                  "(pipeline_request_duration_us, total)); BLS IPC = pipeline_bls's mask_rcnn "
                  "call (its 'model' stage) - mask_rcnn queue+compute (Triton);\n  mask_rcnn "
                  "hop = mask_rcnn queue+compute - in-process model (the runner's stub and "
                  "transfers, plus run-to-run model variance);\n  bls own = the rest "
                  "(pipeline_bls's queue, thread hops, batching delay). bare gRPC = bare client "
                  "latency - mask_rcnn queue+compute.")

        if not args.skip_variants:
            v = report["variants"]
            print(f"\n== 3. Model-call variants on {images[0].name}'s model input "
                  f"{v['model_input_size'][1]}x{v['model_input_size'][0]}: median ms of "
                  f"{args.repeats}, interleaved, each after {args.warmup} warm-up runs")
            rows = []
            for name, r in v["variants"].items():
                if "error" in r:
                    rows.append([name, "-", "-", "-", f"FAILED: {r['error']}"])
                    continue
                d = r["outputs"]["max_abs"]
                diffs = ", ".join(f"{k} {d[k]:.2g}" for k in ("boxes", "scores", "masks") if k in d)
                rows.append([name, f"{r['median_ms']:.0f}", f"{r['min_ms']:.0f}",
                             "baseline" if name == v["baseline"] else f"{r['vs_baseline']:+.1%}",
                             f"{r['outputs']['verdict']} ({diffs})"])
            print(table(["variant", "median ms", "min ms", "vs baseline",
                         "outputs vs baseline's first answer (max |diff|)"], rows))
            print("  tolerances (export/verify.py): boxes 1e-2 px, scores 1e-4, masks 1e-3, "
                  "classes exact; the baseline row compares its last timed answer with its "
                  "first (repeatability)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["loadavg_end"] = os.getloadavg()
    print("\nload average at end: " + " ".join(f"{v:.2f}" for v in report["loadavg_end"]))
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    run_main(main)
