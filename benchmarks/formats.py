"""python -m benchmarks.formats --repository R --image photo.jpg: each mask format of pipeline_bls
at score_threshold 0: bytes over gRPC and HTTP, time, and masks against the RLE masks of the
same request (dense, box and exact polygons must equal them). Figures: docs/answers.md."""

import tritonclient.grpc as grpcclient

from benchmarks import harness as h
from bls.contract.tensors import PIPELINE_NAME
from client.results import Detections, decode_masks

FORMATS = {"rle": {}, "dense": {}, "box": {}, "polygon": {},
           "polygon tolerance 1": {"mask_format": "polygon", "polygon_tolerance": 1.0}}


def measure(server, image: h.Image) -> dict:
    """Format -> detections, gRPC bytes and ms (after a warm-up), HTTP bytes, masks vs RLE."""
    rows, masks = {}, {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        batch = h.batched(client, PIPELINE_NAME)
        inputs = [h.make_input(grpcclient, image.data, batch)]
        for name, extra in FORMATS.items():  # rle first: the reference
            params = {"score_threshold": 0.0, "mask_format": name} | extra
            try:
                for _ in range(2):  # the first a warm-up
                    seconds, result = h.timed(client.infer, PIPELINE_NAME, inputs,
                                              parameters=params, client_timeout=h.REQUEST_TIMEOUT_S)
            except grpcclient.InferenceServerException as e:
                rows[name] = {"refused": e.message()}
                continue
            got = decode_masks(Detections.from_result(result, batch)).astype(bool)
            reference = masks.setdefault("rle", got)
            union = (got | reference).sum()
            _, http_bytes = h.http_answer(server, PIPELINE_NAME, image.data, batch, params)
            rows[name] = {"detections": len(got), "grpc_ms": seconds * 1000,
                          "grpc_bytes": result.get_response().ByteSize(), "http_bytes": http_bytes,
                          "pixels_differ": int((got != reference).sum()),
                          "pooled_iou": float((got & reference).sum() / union) if union else 1.0}
    return rows


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.formats", __doc__, "image", "repository", "size", "json")
    args = h.parse(p, argv)
    with h.session("benchmarks.formats", argv, args) as run, h.serve(run.repo.path) as server:
        report = {image.name: measure(server, image) for image in h.images(args.image)}
    print("\n" + h.table(
        ["image", "format", "dets", "gRPC answer", "HTTP body", "gRPC ms", "IoU vs rle", "differ"],
        [[image, fmt, "refused: " + r["refused"][:80]] + [""] * 5 if "refused" in r else
         [image, fmt, r["detections"], h.fmt_bytes(r["grpc_bytes"]), h.fmt_bytes(r["http_bytes"]),
          f"{r['grpc_ms']:.0f}", f"{r['pooled_iou']:.4f}", r["pixels_differ"]]
         for image, rows in report.items() for fmt, r in rows.items()], left=2))
    h.write_json(args.json, {"machine": run.machine, "images": report})
    ok = all(r.get("pixels_differ", 0) == 0 for rows in report.values()
             for fmt, r in rows.items() if fmt in ("dense", "box", "polygon"))
    print(f"dense, box and polygon identical to rle (pixels differing 0): {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    h.run_main(main)
