"""python -m benchmarks.formats: each mask format of pipeline_bls (score_threshold 0): the answer's size
over gRPC and HTTP, its time, its masks against the RLE masks (dense, box and exact polygons must equal them).
Figures: docs/answers.md.

  python -m benchmarks.formats --repository build/bench/repository --image photo.jpg
"""

from __future__ import annotations

import numpy as np

from benchmarks import harness as h
from bls.contract.tensors import PIPELINE_NAME

FORMATS = (("rle", {}), ("dense", {}), ("box", {}), ("polygon", {}), ("polygon", {"polygon_tolerance": 1.0}))
EXACT = ("rle", "dense", "box", "polygon")  # must decode to the RLE masks

def measure(server, image: h.Image, formats=FORMATS, base: dict | None = None) -> dict:
    """Format label -> detections, image size, gRPC bytes and ms, HTTP bytes, IoUs against RLE;
    ``base``: the other request parameters (default score_threshold 0: every detection masked)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from client.results import Detections, decode_masks

    rows, masks = {}, {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        batch = h.batched(client, PIPELINE_NAME)
        for fmt, extra in formats:
            name = fmt + "".join(f" {k.split('_')[-1]} {v:g}" for k, v in extra.items())
            params = ({"score_threshold": 0.0} if base is None else base) | {"mask_format": fmt, **extra}
            inputs = [h.make_input(grpcclient, image.data, batch)]
            try:
                for _ in range(2):  # the first a warm-up
                    seconds, result = h.timed(client.infer, PIPELINE_NAME, inputs, parameters=params,
                                              client_timeout=h.REQUEST_TIMEOUT_S)
            except InferenceServerException as e:
                rows[name] = {"refused": e.message()}
                continue
            det = Detections.from_result(result, batch)
            masks[name] = decode_masks(det).astype(bool)
            rows[name] = {"grpc_ms": seconds * 1000, "grpc_bytes": result.get_response().ByteSize(),
                          "detections": len(det), "image_size": list(det.image_size),
                          "http_bytes": h.http_answer(server, PIPELINE_NAME, image.data, batch, params)[1]}
    reference = masks["rle"]
    for name, got in masks.items():
        both, either = (got & reference).sum(axis=(1, 2)), (got | reference).sum(axis=(1, 2))
        iou = np.where(either == 0, 1.0, both / np.maximum(either, 1))
        rows[name].update(min_iou=float(iou.min()) if len(iou) else 1.0,
                          pooled_iou=float(both.sum() / max(int(either.sum()), 1)),
                          pixels_differ=int((got != reference).sum()))
    return rows

def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.formats", __doc__, "image", "repository", "size", "json")
    args = h.parse(p, argv)
    with h.session("benchmarks.formats", argv, args) as run, h.serve(run.repo.path) as server:
        report = {image.name: measure(server, image) for image in h.images(args.image)}
    ok = all(r.get("pixels_differ", 0) == 0 for rows in report.values() for f, r in rows.items() if f in EXACT)
    for name, rows in report.items():
        print(f"\n== {name}\n" + h.table(["format", "dets", "gRPC answer", "HTTP body", "gRPC ms", "min mask IoU vs rle",
                                          "all masks' IoU", "pixels differing"], [
            [fmt, "refused", "", "", "", "", "", r["refused"][:100]] if "refused" in r else
            [fmt, r["detections"], h.fmt_bytes(r["grpc_bytes"]), h.fmt_bytes(r["http_bytes"]), f"{r['grpc_ms']:.0f}",
             f"{r['min_iou']:.4f}", f"{r['pooled_iou']:.4f}", r["pixels_differ"]] for fmt, r in rows.items()]))
    print("\n  dense, box and polygon must equal the RLE masks (0 pixels differing); a simplified polygon only "
          "approaches them")
    h.write_json(args.json, {"machine": run.machine, "images": report})
    print(f"dense, box and polygon identical to rle: {'yes' if ok else 'NO'}")
    return 0 if ok else 1

if __name__ == "__main__":
    h.run_main(main)
