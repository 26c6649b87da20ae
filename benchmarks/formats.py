"""python -m benchmarks.formats: each mask format of pipeline_bls on real photos: the
answer's size over gRPC and HTTP, the time it takes, and how its masks compare with
the RLE masks of the same request.

  python -m benchmarks.formats --repository build/bench/repository \
      --image ../shared/images/vulture.jpeg --image ../shared/images/car.jpg \
      --image ../shared/images/mug.jpg

Per image and format, one request over gRPC (the gRPC message's size and the masks it
decodes to, client.results.decode_masks) and one over HTTP with binary outputs (the body's
size), after one warm-up request; score_threshold 0 so that every detection is masked.
Against the RLE masks: dense, box and exact polygons must be identical; a simplified
polygon (polygon_tolerance) is reported as the smallest mask IoU, the IoU of all masks
together (intersections over unions, summed) and the pixels that differ. An answer over the server's
max_answer_bytes is reported as refused, with the size the server computed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.pipeline import (REQUEST_TIMEOUT_S, _http_infer, batch_dims, begin, check_images,
                                 fmt_bytes, grpc_bytes_input, load_images, prepare_repository,
                                 run_main, table, write_json)
from bls.contract.tensors import PIPELINE_INPUT, PIPELINE_NAME

FORMATS = (("rle", {}), ("dense", {}), ("box", {}), ("polygon", {}),
           ("polygon", {"polygon_tolerance": 1.0}))


def label(fmt: str, extra: dict) -> str:
    return fmt + "".join(f" {k.split('_')[-1]} {v:g}" for k, v in extra.items())


def measure(server, image) -> dict:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from client.results import Detections, decode_masks

    rows = {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        batch = batch_dims(client, PIPELINE_NAME)
        masks = {}
        for fmt, extra in FORMATS:
            params = {"score_threshold": 0.0, "mask_format": fmt, **extra}
            inputs = [grpc_bytes_input(grpcclient, image.data, batch)]
            row = {}
            try:
                client.infer(PIPELINE_NAME, inputs, parameters=params,
                             client_timeout=REQUEST_TIMEOUT_S)  # warm-up
                start = time.perf_counter()
                result = client.infer(PIPELINE_NAME, inputs, parameters=params,
                                      client_timeout=REQUEST_TIMEOUT_S)
                row["grpc_ms"] = (time.perf_counter() - start) * 1000
            except InferenceServerException as e:
                rows[label(fmt, extra)] = {"refused": e.message()}
                continue
            row["grpc_bytes"] = result.get_response().ByteSize()
            det = Detections.from_result(result, bool(batch))
            row["detections"] = len(det)
            masks[label(fmt, extra)] = decode_masks(det).astype(bool)
            http_input = httpclient.InferInput(PIPELINE_INPUT.name, batch + [1],
                                               PIPELINE_INPUT.dtype)
            http_input.set_data_from_numpy(np.array([image.data], dtype=np.object_)
                                           .reshape(batch + [1]))
            row["http_bytes"], _ = _http_infer(server, [http_input], params)
            rows[label(fmt, extra)] = row
    reference = masks["rle"]
    for name, got in masks.items():
        differ = (got != reference).sum(axis=(1, 2))
        union = (got | reference).sum(axis=(1, 2))
        iou = np.where(union == 0, 1.0, (got & reference).sum(axis=(1, 2)) / np.maximum(union, 1))
        pooled = (got & reference).sum() / max(int((got | reference).sum()), 1)
        rows[name].update(min_iou=float(iou.min()) if len(iou) else 1.0,
                          pooled_iou=float(pooled), pixels_differ=int(differ.sum()))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.formats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="image to send (repeatable); default: a generated 640x480 JPEG")
    p.add_argument("--repository", type=Path,
                   help="an exported repository to serve (a new or empty folder is exported "
                        "into and kept); default: export into a temporary folder")
    p.add_argument("--min-size", type=int, help="export: shortest edge (default 800)")
    p.add_argument("--max-size", type=int, help="export: longest edge (default 1333)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    check_images(p, args.image)
    from server.launcher import TritonServer

    _, info = begin("benchmarks.formats", argv)
    images = load_images(args.image)
    scratch = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    try:
        repo = prepare_repository(args, scratch)
        with TritonServer(repo.path) as server:
            report = {image.name: measure(server, image) for image in images}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ok = True
    for name, rows in report.items():
        print(f"\n== {name}")
        lines = []
        for fmt, r in rows.items():
            if "refused" in r:
                lines.append([fmt, "refused", "", "", "", "", "", r["refused"][:100]])
                continue
            exact = fmt in ("rle", "dense", "box", "polygon")
            ok = ok and (r["pixels_differ"] == 0 if exact else True)
            lines.append([fmt, f"{r['detections']}", fmt_bytes(r["grpc_bytes"]),
                          fmt_bytes(r["http_bytes"]), f"{r['grpc_ms']:.0f}",
                          f"{r['min_iou']:.4f}", f"{r['pooled_iou']:.4f}",
                          f"{r['pixels_differ']}"])
        print(table(["format", "dets", "gRPC answer", "HTTP body", "gRPC ms",
                     "min mask IoU vs rle", "all masks' IoU", "pixels differing"], lines))
    print("\n  dense, box and polygon must equal the RLE masks (0 pixels differing); a "
          "simplified polygon only approaches them")
    write_json(args.json, {"machine": info, "images": report})
    print(f"dense, box and polygon identical to rle: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    run_main(main)
