"""python -m benchmarks.pipeline (`make bench`): 1. one request at a time on a real server,
pipeline_bls and the ensemble against the bare mask_rcnn, interleaved and paired (goal:
pipeline_bls within 3 % of the bare model); 2. the mask postprocess against the seed's: 100
synthetic detections with 28x28 masks pasted and encoded in process, the seed's per-mask PIL loop
(the baseline) against encode_rle, what pipeline_bls answers (goal >= 10x at 1920x1080), and
against our dense masks. Answer bytes per mask format: python -m benchmarks.formats. Commands
and figures: docs/measurements.md and docs/benchmarks.md."""

from functools import partial

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from benchmarks import harness as h
from export.standin import synthetic_outputs
from bls.contract.tensors import ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, PIPELINE_NAME
from bls.pipeline.host import HOST
from bls.pipeline.steps import prepare

TARGET = 10.0  # speed-up of encode_rle over the seed's loop at 1920x1080
OVERHEAD_TARGET = 0.03  # pipeline_bls's latency over the bare model's, one request at a time
DETECTIONS, RESOLUTION, SIZES = 100, 28, ((1080, 1920), (480, 640))
BARE = f"{MODEL_NAME} (bare)"


def served(server, meta, images: list[h.Image], iterations: int, warmup: int) -> dict:
    """Per image: each target's latency summary and its overhead against the bare model (of
    the medians, and the median of the paired per-iteration ratios)."""
    results = {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        infer = partial(client.infer, client_timeout=h.REQUEST_TIMEOUT_S)
        for image in images:
            model_input = prepare(image.data, meta).model_input
            if h.batched(client, MODEL_NAME):
                model_input = model_input[None]
            calls = {name: partial(infer, name, [h.make_input(grpcclient, image.data,
                                                              h.batched(client, name))])
                     for name in (PIPELINE_NAME, ENSEMBLE_NAME)}
            calls[BARE] = partial(infer, MODEL_NAME, [h.tensor_input(grpcclient, MODEL_INPUT.name,
                                                                     model_input)])
            samples, _ = h.interleaved(calls, iterations, warmup, image.name)
            bare = h.summary(samples[BARE])["median_ms"]
            results[image.name] = {name: h.summary(s) | {
                "overhead": h.summary(s)["median_ms"] / bare - 1,
                "paired_overhead": h.paired(s, samples[BARE])} for name, s in samples.items()}
    return results


def print_served(results: dict, iterations: int) -> None:
    print(f"\n== 1. One request at a time (gRPC), {iterations} interleaved iterations per target")
    rows = [[image, name, f"{s['median_ms']:.1f}", f"{s['mean_ms']:.1f}",
             f"{s['overhead']:+.1%}", f"{s['paired_overhead']:+.1%}"]
            for image, r in results.items() for name, s in r.items()]
    print(h.table(["image", "target", "median ms", "mean ms", "overhead", "paired"], rows, left=2))
    met = all(r[PIPELINE_NAME]["overhead"] <= OVERHEAD_TARGET for r in results.values())
    print(f"goal: pipeline_bls within {OVERHEAD_TARGET:.0%} of the bare model {h.verdict(met)}")


def seed_pil_paste(masks: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """The baseline, the seed's postprocess: per float [M, M] mask a full-image uint8 canvas,
    PIL's bilinear resize to the rounded box, > 0.5, pasted; -> uint8 [N, H, W]."""
    canvases = []
    for mask, box in zip(masks, boxes):
        canvas = np.zeros((height, width), np.uint8)
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        w, hh = max(x2 - x1, 1), max(y2 - y1, 1)
        resized = Image.fromarray(mask.astype(np.float32)).resize((w, hh), Image.BILINEAR)
        binary = (np.asarray(resized) > 0.5).astype(np.uint8)
        xa, ya, xb, yb = max(x1, 0), max(y1, 0), min(x1 + w, width), min(y1 + hh, height)
        if xb > xa and yb > ya:
            canvas[ya:yb, xa:xb] = binary[ya - y1:yb - y1, xa - x1:xb - x1]
        canvases.append(canvas)
    return np.stack(canvases)


PATHS = {"seed's PIL loop (baseline)": seed_pil_paste,  # ours: what pipeline_bls answers
         "ours, rle (pipeline_bls)": lambda *a: HOST.encode_rle(HOST.paste(*a)),
         "ours, dense": lambda *a: HOST.dense(HOST.paste(*a))}


def bench(height: int, width: int, repeats: int) -> dict:
    """Median and mean ms per path (interleaved rounds), speed-ups, and the dense masks'
    mean IoU against the baseline's (the two agree on what they paste)."""
    out = synthetic_outputs(DETECTIONS, height, width, RESOLUTION)
    args = (out["masks"][:, 0], out["boxes"], height, width)
    samples, _ = h.interleaved({name: partial(path, *args) for name, path in PATHS.items()},
                               repeats, 1, f"masks {width}x{height}")
    result = {name: h.summary(s, keep=True) for name, s in samples.items()}
    baseline = result["seed's PIL loop (baseline)"]["median_ms"]
    for r in result.values():
        r["speedup"] = baseline / r["median_ms"]
    a, b = seed_pil_paste(*args).astype(bool), HOST.dense(HOST.paste(*args)).astype(bool)
    iou = (a & b).sum(axis=(1, 2)) / np.maximum((a | b).sum(axis=(1, 2)), 1)
    return {"paths": result, "mean_iou_dense_vs_baseline": float(iou.mean())}


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.pipeline", __doc__, "image", "size", "repository", "json")
    p.add_argument("--iterations", type=int, default=5, help="section 1: timed rounds (5)")
    p.add_argument("--warmup", type=int, default=1, help="section 1: untimed rounds first (1)")
    p.add_argument("--skip-server", action="store_true", help="section 2 only: no server")
    p.add_argument("--repeats", type=int, default=15, help="section 2: timed runs per path (15)")
    args = h.parse(p, argv)
    report = {}
    with h.session("benchmarks.pipeline", argv, None if args.skip_server else args) as run:
        report |= {"command": run.command, "machine": run.machine}
        if run.repo is not None:
            with h.serve(run.repo.path, run.scratch / "triton.log") as server:
                report["served"] = served(server, run.repo.meta, h.images(args.image),
                                          args.iterations, args.warmup)
            print_served(report["served"], args.iterations)
    results = {f"{w}x{hh}": bench(hh, w, args.repeats) for hh, w in SIZES}
    print(f"\n== 2. Mask postprocess: {DETECTIONS} detections, {RESOLUTION}x{RESOLUTION} masks "
          f"(in process, median of {args.repeats} interleaved runs)")
    rows = [[size, name, *(f"{s[k]:.1f}" for k in ("median_ms", "mean_ms")), f"{s['speedup']:.1f}x"]
            for size, r in results.items() for name, s in r["paths"].items()]
    print(h.table(["image", "path", "median ms", "mean ms", "speed-up"], rows, left=2))
    print("  mean IoU of our dense masks against the baseline's: " + ", ".join(
        f"{size} {r['mean_iou_dense_vs_baseline']:.3f}" for size, r in results.items()))
    speedup = results["1920x1080"]["paths"]["ours, rle (pipeline_bls)"]["speedup"]
    print(f"goal: rle {speedup:.1f}x the baseline at 1920x1080 (>= {TARGET:.0f}x) "
          f"{h.verdict(speedup >= TARGET)}")
    h.write_json(args.json, report | {"masks": results})
    return 0


if __name__ == "__main__":
    h.run_main(main)
