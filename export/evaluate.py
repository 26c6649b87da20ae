"""python -m export evaluate: does the served model still score the validation AP?

  python -m export evaluate --annotations val.json --images val/ --url 127.0.0.1:8001
  python -m export evaluate --annotations val.json --images val/ --url ... \
      --repository build/repository --checkpoint my_maskrcnn.pth --json build/eval.json
  python -m export evaluate --images photos/ --repository build/repository \
      --make-annotations build/reference.json   # the reference's answers as ground truth

Every image of a COCO-format annotation file goes through the served pipeline (gRPC or
HTTP, as `python -m client infer` sends it) and through the in-process reference: the
eager torchvision model (not the TorchScript file), rebuilt from the export's metadata
and weights, behind the same preprocessing and postprocessing (bls.pipeline.Pipeline),
so that the two differ only where serving or export changed something. Both are scored
with pycocotools' COCOeval, box and mask AP, overall and per class, and printed side by
side with the difference; --json writes the numbers for CI.

Requests ask for score_threshold 0.05 (what COCO evaluation usually keeps) unless
--score-threshold says otherwise, and mask_format rle. With --make-annotations, no server
is needed: the reference's answers on the images of --images become a COCO annotation
file, ground truth against which the served model must score 100 (a parity check at the
level of the metric).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

IOU_TYPES = ("bbox", "segm")
SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


def _mask_area(segmentation) -> int:
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode()
    return int(mask_utils.area(rle))


def _without_empty_masks(gt: COCO, results: Sequence[dict]) -> tuple[COCO, list[dict], int, int]:
    """For the mask AP: ground-truth objects whose mask is empty marked ignored (nothing
    can match them), detections whose mask is empty dropped (they can match nothing).
    -> (ground truth, results, objects ignored, detections dropped)."""
    dataset = json.loads(json.dumps(gt.dataset))
    ignored = 0
    for ann in dataset["annotations"]:
        # annToRLE: polygons (as in COCO's own files), uncompressed or compressed RLE
        if "segmentation" in ann and int(mask_utils.area(gt.annToRLE(ann))) == 0:
            # COCOeval takes "ignore" from "iscrowd": a crowd object is not counted
            ann["iscrowd"], ignored = 1, ignored + 1
    kept = [r for r in results if "segmentation" in r and _mask_area(r["segmentation"]) > 0]
    copy = COCO()
    copy.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        copy.createIndex()
    return copy, kept, ignored, len(results) - len(kept)


def score(gt: COCO, results: Sequence[dict]) -> dict:
    """Score COCO results against the ground truth with COCOeval, box and mask AP.

    No results at all score 0. The mask AP leaves empty masks out on both sides
    (_without_empty_masks: a model with random weights makes many) and says how many
    ("empty_masks").

    Returns:
        {iou_type: {AP, AP50, ..., per_class}}, in percent as COCO reports them;
        per_class maps category name -> AP (mean over IoU thresholds .50:.95 and recall,
        all areas, 100 detections), None where the class has no ground truth.
    """
    out = {}
    cats = gt.loadCats(gt.getCatIds())
    seen = [c["name"] for c in cats]
    # a name given to several ids (torchvision's "N/A") is told apart by its id
    names = {c["id"]: c["name"] if seen.count(c["name"]) == 1 else f"{c['name']}#{c['id']}"
             for c in cats}
    for iou_type in IOU_TYPES:
        truth, answers, extra = gt, list(results), {}
        if iou_type == "segm":
            truth, answers, ignored, dropped = _without_empty_masks(gt, results)
            extra = {"empty_masks": {"ground_truth_ignored": ignored, "results_dropped": dropped}}
        if not answers:
            out[iou_type] = {**{k: 0.0 for k in SUMMARY},
                             "per_class": {n: 0.0 for n in names.values()}, **extra}
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints as it goes
            dt = truth.loadRes([dict(r) for r in answers])
            ev = COCOeval(truth, dt, iou_type)
            ev.params.imgIds = sorted(gt.getImgIds())
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = {k: round(float(v) * 100, 3) for k, v in zip(SUMMARY, ev.stats[:6])}
        precision = ev.eval["precision"]  # [T, R, K, A, M]
        per_class = {}
        for k, cat in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_class[names[cat]] = round(float(p.mean()) * 100, 3) if p.size else None
        out[iou_type] = {**stats, "per_class": per_class, **extra}
    return out


def reference_pipeline(meta, checkpoint: Path | None):
    """Build the in-process reference: bls.pipeline.Pipeline around the eager torchvision
    model the export was made from.

    The same weights (the seeded initialisation its metadata names, or ``checkpoint``)
    and the same box threshold, proposals and detections.

    Raises:
        SystemExit: not a torchvision export, or ``checkpoint`` missing or not the
            export's.
    """
    import torch

    from bls.pipeline.steps import Pipeline
    from export import torchvision_maskrcnn as tvm

    if not meta.source.startswith("torchvision"):
        raise SystemExit(f"the reference is the eager torchvision model; this export is "
                         f"{meta.source!r} (for detectron2, see `python -m export parity`)")
    seed = re.search(r"random initialisation \(seed (\d+)\)", meta.weights)
    if checkpoint is None and seed is None:
        raise SystemExit(f"the export used {meta.weights!r}: give that file as --checkpoint")
    if checkpoint is not None and meta.weights != f"checkpoint {checkpoint.name}":
        raise SystemExit(f"--checkpoint {checkpoint.name}, but the export used {meta.weights!r}")
    extra = meta.extra
    model, _ = tvm.build(checkpoint, False, int(seed.group(1)) if seed else 0,
                         extra.get("box_score_thresh", 0.05), extra.get("detections", 100),
                         extra.get("proposals", 1000))
    module = tvm.TorchvisionMaskRCNN(model).eval()
    names = [spec.name for spec in meta.outputs]

    def call(model_input: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = module(torch.from_numpy(np.ascontiguousarray(model_input)))
        return {n: t.numpy() for n, t in zip(names, outputs)}

    return Pipeline(meta, call)


def served(paths: list[Path], url: str, protocol: str, model: str, parameters: dict,
           concurrency: int):
    """Send every image to the served pipeline.

    Returns:
        (ServedModel, Detections per path, in order).

    Raises:
        SystemExit: an image failed.
    """
    from client import cli

    with tqdm(total=len(paths), desc="served", unit="img", file=sys.stderr, disable=None) as bar:
        run = asyncio.run(cli.infer_images(paths, url, protocol, model, concurrency,
                                           parameters, on_result=lambda _: bar.update()))
    if run.failed:
        raise SystemExit(f"{len(run.failed)} image(s) failed, e.g. {run.failed[0].path}: "
                         f"{run.failed[0].error}")
    return run.model, [r.detections for r in run.results]


def results_of(detections, image_ids: Sequence[int], category_ids: Sequence[int]) -> list[dict]:
    """Turn each image's Detections into COCO results entries under its image id."""
    from client.results import coco_results

    out = []
    for det, image_id in zip(detections, image_ids):
        out += coco_results(det, image_id, category_ids)
    return out


def make_annotations(paths: list[Path], reference, meta, score_threshold: float) -> dict:
    """Make a COCO annotation dataset of the reference's answers on ``paths``.

    Returns:
        The dataset: images, annotations (RLE segmentation, area), categories.
    """
    from bls.contract.parameters import RequestOptions
    from client.results import Detections, coco_results

    images, annotations = [], []
    for image_id, path in enumerate(tqdm(paths, desc="reference", unit="img", file=sys.stderr,
                                         disable=None), start=1):
        det = Detections.from_arrays(reference(path.read_bytes(), RequestOptions(score_threshold)))
        height, width = det.image_size
        images.append({"id": image_id, "file_name": path.name, "height": height, "width": width})
        for entry in coco_results(det, image_id, meta.category_ids):
            rle = dict(entry["segmentation"])
            annotations.append({**entry, "id": len(annotations) + 1, "iscrowd": 0,
                                "area": _mask_area(rle)})
    for a in annotations:
        del a["score"]
    categories = [{"id": i, "name": n} for i, n in zip(meta.category_ids, meta.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def table(report: dict) -> str:
    """Render box and mask AP, served beside reference with the difference, as text."""
    lines = []
    for iou_type in IOU_TYPES:
        s, r = report["served"][iou_type], report.get("reference", {}).get(iou_type)
        lines.append(f"\n== {'box' if iou_type == 'bbox' else 'mask'} AP")
        lines.append(f"  {'':<24}{'served':>10}{'reference':>11}{'difference':>12}")
        rows = [(k, s[k], r and r[k]) for k in SUMMARY]
        rows += [(f"  {name}", value, r and r["per_class"].get(name))
                 for name, value in s["per_class"].items() if value is not None]
        for name, a, b in rows:
            diff = "" if b is None else f"{a - b:+.3f}"
            lines.append(f"  {name:<24}{a:>10.3f}{'' if b is None else f'{b:.3f}':>11}{diff:>12}")
        if "empty_masks" in s:
            e = s["empty_masks"]
            lines.append(f"  (empty masks left out: {e['ground_truth_ignored']} ground-truth "
                         f"objects ignored, {e['results_dropped']} served detections dropped)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m export evaluate``; return the exit status."""
    from client.cli import DEFAULT_URLS

    p = argparse.ArgumentParser(prog="python -m export evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", type=Path, help="COCO-format annotation file")
    p.add_argument("--make-annotations", type=Path, metavar="OUT",
                   help="write the reference's answers on the images of --images (sorted) "
                        "as a COCO annotation file, and stop (needs --repository)")
    p.add_argument("--images", type=Path, required=True, help="folder of its images (file_name)")
    p.add_argument("--url", help="HOST:PORT of the server; default 127.0.0.1:8001 (grpc)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--model", default="pipeline_bls", help="the served pipeline")
    p.add_argument("--repository", type=Path,
                   help="the exported repository (its mask_rcnn/1/model.pt metadata), for the "
                        "in-process reference; without it, no reference is run")
    p.add_argument("--checkpoint", type=Path,
                   help="the state dict the export used, when it used one (the reference)")
    p.add_argument("--score-threshold", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the numbers here")
    args = p.parse_args(argv)
    url = (args.url or DEFAULT_URLS[args.protocol]).split("://", 1)[-1]
    if args.make_annotations:
        from client.cli import collect_images
        from export.torchscript import MODEL_FILENAME, read_metadata

        if args.repository is None:
            p.error("--make-annotations needs --repository (the export to rebuild the reference from)")
        meta = read_metadata(args.repository / "mask_rcnn" / "1" / MODEL_FILENAME)
        dataset = make_annotations(collect_images([args.images]),
                                   reference_pipeline(meta, args.checkpoint), meta,
                                   args.score_threshold)
        args.make_annotations.parent.mkdir(parents=True, exist_ok=True)
        args.make_annotations.write_text(json.dumps(dataset))
        print(f"{len(dataset['annotations'])} objects in {len(dataset['images'])} images: "
              f"{args.make_annotations}")
        return 0
    if args.annotations is None:
        p.error("--annotations is required (or --make-annotations)")

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(args.annotations))
    images = gt.loadImgs(sorted(gt.getImgIds()))
    paths = [args.images / image["file_name"] for image in images]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} image(s) of {args.annotations} are not in "
                         f"{args.images}, e.g. {missing[0]}")
    image_ids = [image["id"] for image in images]
    parameters = {"score_threshold": args.score_threshold, "mask_format": "rle"}
    model, answers = served(paths, url, args.protocol, args.model, parameters,
                            args.concurrency)
    if model.meta is None:
        raise SystemExit(f"{args.model} has no model_metadata: its category ids are unknown")
    category_ids = model.meta.category_ids
    report = {"annotations": str(args.annotations), "images": len(paths), "model": args.model,
              "weights": model.meta.weights, "parameters": parameters,
              "served": score(gt, results_of(answers, image_ids, category_ids))}
    if args.repository is not None:
        from bls.contract.parameters import RequestOptions
        from client.results import Detections
        from export.torchscript import MODEL_FILENAME, read_metadata

        meta = read_metadata(args.repository / "mask_rcnn" / "1" / MODEL_FILENAME)
        reference = reference_pipeline(meta, args.checkpoint)
        options = RequestOptions(args.score_threshold)
        own = [Detections.from_arrays(reference(path.read_bytes(), options))
               for path in tqdm(paths, desc="reference", unit="img", file=sys.stderr,
                                disable=None)]
        report["reference"] = score(gt, results_of(own, image_ids, category_ids))
    print(f"{len(paths)} images of {args.annotations}; {args.model} at {url} ({args.protocol}); "
          f"weights: {model.meta.weights}")
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"numbers written to {args.json}")
    return 0
