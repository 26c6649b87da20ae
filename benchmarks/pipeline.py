"""python -m benchmarks.pipeline (`make bench`): the mask postprocess against the seed's. 100
synthetic detections with 28x28 masks, pasted and encoded in process: the seed's per-mask PIL
loop (the baseline) against encode_rle, what pipeline_bls answers (target >= 10x at 1920x1080),
and against our dense masks. No server.

The other speed goals have their own scripts (docs/benchmarks.md): served latency of
pipeline_bls, the ensemble and the bare mask_rcnn, python -m benchmarks.sweep (--concurrency 1
for a lone request); answer bytes per mask format, python -m benchmarks.formats.

  python -m benchmarks.pipeline --repeats 15 --json build/bench/bench.json
"""

import gc

import numpy as np
from PIL import Image

from benchmarks import harness as h
from benchmarks.standin import synthetic_outputs
from bls.pipeline import masks as mask_ops

TARGET = 10.0  # speed-up of encode_rle over the seed's loop at 1920x1080
DETECTIONS, RESOLUTION, SIZES = 100, 28, ((1080, 1920), (480, 640))
MOVED = ("the served sections moved: latency to python -m benchmarks.sweep, answer bytes to "
         "python -m benchmarks.formats (docs/benchmarks.md); --image, --repository, "
         "--iterations, --warmup and --skip-server do nothing here")


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


def ours_dense(masks: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """What pipeline_bls does for mask_format=dense."""
    windows = mask_ops.paste_windows(masks, boxes, height, width)
    return mask_ops.dense_masks(windows, height, width)


PATHS = {"seed's PIL loop (baseline)": seed_pil_paste,
         "ours, rle (pipeline_bls)": mask_ops.encode_rle, "ours, dense": ours_dense}


def bench(height: int, width: int, repeats: int) -> dict:
    """Median and mean ms per path (interleaved rounds), speed-ups, and the dense masks'
    mean IoU against the baseline's (the two agree on what they paste)."""
    out = synthetic_outputs(DETECTIONS, height, width, RESOLUTION)
    args = (out["masks"][:, 0], out["boxes"], height, width)
    samples = {name: [] for name in PATHS}
    for timed, name in h.rounds(list(PATHS), repeats, 1, f"masks {width}x{height}"):
        gc.collect()
        seconds, _ = h.timed(PATHS[name], *args)
        if timed:
            samples[name].append(seconds)
    result = {name: h.summary(s, keep=True) for name, s in samples.items()}
    baseline = result["seed's PIL loop (baseline)"]["median_ms"]
    for r in result.values():
        r["speedup"] = baseline / r["median_ms"]
    a, b = seed_pil_paste(*args).astype(bool), ours_dense(*args).astype(bool)
    iou = (a & b).sum(axis=(1, 2)) / np.maximum((a | b).sum(axis=(1, 2)), 1)
    return {"paths": result, "mean_iou_dense_vs_baseline": float(iou.mean())}


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.pipeline", __doc__, "image", "repository", "json")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per path (default 15)")
    p.add_argument("--iterations", type=int, help="moved (see above): does nothing here")
    p.add_argument("--warmup", type=int, help="moved (see above): does nothing here")
    p.add_argument("--skip-server", action="store_true", help="the default now: no server")
    args = h.parse(p, argv)
    command, machine = h.begin("benchmarks.pipeline", argv)
    if args.image or args.repository or args.iterations or args.warmup is not None:
        print(f"note: {MOVED}")
    results = {f"{w}x{hh}": bench(hh, w, args.repeats) for hh, w in SIZES}
    print(f"\n== Mask postprocess: {DETECTIONS} detections, {RESOLUTION}x{RESOLUTION} masks "
          f"(in process, median of {args.repeats} interleaved runs)")
    rows = [[size, name, *(f"{s[k]:.1f}" for k in ("median_ms", "mean_ms")), f"{s['speedup']:.1f}x"]
            for size, r in results.items() for name, s in r["paths"].items()]
    print(h.table(["image", "path", "median ms", "mean ms", "speed-up"], rows, left=2))
    print("  mean IoU of our dense masks against the baseline's: " + ", ".join(
        f"{size} {r['mean_iou_dense_vs_baseline']:.3f}" for size, r in results.items()))
    speedup = results["1920x1080"]["paths"]["ours, rle (pipeline_bls)"]["speedup"]
    print(f"goal: rle {speedup:.1f}x the baseline at 1920x1080 (>= {TARGET:.0f}x) "
          f"{h.verdict(speedup >= TARGET)}")
    h.write_json(args.json, {"command": command, "machine": machine, "masks": results})
    return 0


if __name__ == "__main__":
    h.run_main(main)
