"""python -m export evaluate: COCO AP of the served pipeline and of the in-process eager
reference. The scoring is checked on ground truth it must score 100 and on answers
perturbed by known amounts; the whole command against the real server on a generated
COCO-format dataset whose ground truth is the reference's own answers."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bls.contract.parameters import RequestOptions
from client.results import Detections, rle_strings
from export import samples
from export.evaluate import reference_pipeline, score

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = [{"id": 1, "name": "blob"}, {"id": 2, "name": "bar"}, {"id": 3, "name": "N/A"},
              {"id": 4, "name": "N/A"}]


def coco(dataset: dict) -> COCO:
    gt = COCO()
    gt.dataset = json.loads(json.dumps(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def rectangles(n_images=4, per_image=6, seed=0):
    """A dataset of rectangular objects and, as detections, exactly its ground truth."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 100, "width": 120})
        for _ in range(per_image):
            x, y = rng.integers(0, 60), rng.integers(0, 40)
            w, h = rng.integers(15, 50), rng.integers(15, 50)
            mask = np.zeros((100, 120), np.uint8)
            mask[y:y + h, x:x + w] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            category = int(rng.integers(1, 3))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category, "bbox": [int(x), int(y), int(w), int(h)],
                                "area": int(w * h), "segmentation": rle, "iscrowd": 0})
            results.append({"image_id": image_id, "category_id": category,
                            "bbox": [float(x), float(y), float(w), float(h)],
                            "score": float(rng.uniform(0.5, 1)), "segmentation": rle})
    return coco({"images": images, "annotations": annotations, "categories": CATEGORIES}), results


def shifted(results, dx: int):
    out = []
    for r in results:
        mask = mask_utils.decode(r["segmentation"])
        mask = np.roll(mask, dx, axis=1)
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode()
        x, y, w, h = r["bbox"]
        out.append({**r, "bbox": [x + dx, y, w, h], "segmentation": rle})
    return out


def test_the_ground_truth_itself_scores_100_and_perturbations_score_what_they_should():
    gt, results = rectangles()
    exact = score(gt, results)
    for iou_type in ("bbox", "segm"):
        assert exact[iou_type]["AP"] == 100.0 and exact[iou_type]["AP50"] == 100.0
        assert exact[iou_type]["per_class"]["blob"] == 100.0
        assert exact[iou_type]["per_class"]["N/A#3"] is None  # no ground truth
    # Half the objects missed, the rest exact: precision 1 up to recall 0.5, so COCO's
    # 101-point AP is 51/101.
    half = score(gt, results[::2])
    for iou_type in ("bbox", "segm"):
        assert half[iou_type]["AP"] == pytest.approx(100 * 51 / 101, abs=2.5)
    # Shifting every answer sideways lowers AP more the further it goes, AP50 last.
    aps = [score(gt, shifted(results, dx)) for dx in (0, 2, 5, 12)]
    for iou_type in ("bbox", "segm"):
        values = [a[iou_type]["AP"] for a in aps]
        assert values == sorted(values, reverse=True) and values[0] > values[-1] + 40
        assert aps[1][iou_type]["AP50"] == 100.0
    assert score(gt, [])["bbox"]["AP"] == 0.0


@pytest.mark.server
@pytest.mark.ci  # a served smoke run: CI only
def test_evaluate_served_against_the_references_own_answers_scores_100(server, exported,
                                                                      tmp_path):
    """Ground truth made of the eager reference's own answers on generated scenes: the
    served pipeline (TorchScript, over gRPC) and the reference itself score 100."""
    reference = reference_pipeline(exported.meta, None)
    folder = tmp_path / "images"
    folder.mkdir()
    images, annotations = [], []
    for image_id, (h, w) in enumerate([(240, 320), (300, 200), (180, 260)], start=1):
        data = samples.encode(samples.scene(h, w, seed=10 + image_id), ".png")
        (folder / f"{image_id}.png").write_bytes(data)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        det = Detections.from_arrays(reference(data, RequestOptions(0.05)))
        masks = mask_utils.decode([{"size": [h, w], "counts": c.encode()}
                                   for c in rle_strings(det)]).transpose(2, 0, 1)
        for box, cls, counts, mask in zip(det.boxes, det.classes, rle_strings(det), masks):
            x1, y1, x2, y2 = box.tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": exported.meta.category_ids[int(cls)],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(mask.sum()),
                                "segmentation": {"size": [h, w], "counts": counts},
                                "iscrowd": 0})
    assert len(annotations) > 10, "precondition: the seeded model detects things"
    categories = [{"id": i, "name": n} for i, n in zip(exported.meta.category_ids,
                                                       exported.meta.class_names)]
    ann_file = tmp_path / "annotations.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": categories}))
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-m", "export", "evaluate", "--annotations",
                           str(ann_file), "--images", str(folder), "--url", server.grpc_url,
                           "--repository", str(exported.repository), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    for side in ("served", "reference"):
        for iou_type in ("bbox", "segm"):
            assert report[side][iou_type]["AP"] == pytest.approx(100.0, abs=0.05), {s: {t: report[s][t]["AP"] for t in ("bbox", "segm")} for s in ("served", "reference")}
    assert "== box AP" in done.stdout and "== mask AP" in done.stdout


def test_empty_masks_are_left_out_of_the_mask_ap_and_counted():
    """An object or answer whose mask is empty can match nothing in mask AP: the object is
    ignored, the answer dropped, both counted; the box AP keeps both."""
    gt, results = rectangles(n_images=1, per_image=4)
    dataset = gt.dataset
    empty = mask_utils.encode(np.asfortranarray(np.zeros((100, 120), np.uint8)))
    empty["counts"] = empty["counts"].decode()
    dataset["annotations"].append({"id": 99, "image_id": 1, "category_id": 1,
                                   "bbox": [5, 5, 0.5, 0.5], "area": 0,
                                   "segmentation": empty, "iscrowd": 0})
    results = results + [{"image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 0.5, 0.5],
                          "score": 0.3, "segmentation": empty}]
    scored = score(coco(dataset), results)
    assert scored["bbox"]["AP"] == 100.0 and scored["segm"]["AP"] == 100.0
    assert scored["segm"]["empty_masks"] == {"ground_truth_ignored": 1, "results_dropped": 1}


def test_polygon_ground_truth_as_in_cocos_own_files():
    """COCO's annotation files outline objects as polygons: scored like RLE ones."""
    gt, results = rectangles(n_images=1, per_image=3)
    dataset = gt.dataset
    for ann in dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    scored = score(coco(dataset), results)
    assert scored["bbox"]["AP"] == 100.0 and scored["segm"]["AP"] > 50.0
    assert scored["segm"]["empty_masks"]["ground_truth_ignored"] == 0
