"""Parity: the served pipeline_bls against detectron2's DefaultPredictor.

The same image files go to both: as encoded bytes to pipeline_bls (on a running server,
or an embedded one started here), and through detectron2's ``read_image`` (PIL, as
detectron2's demo reads files) to a ``DefaultPredictor`` built from the same config and
weights, whose answer (``detector_postprocess``: boxes in original pixels, masks pasted
at 0.5) is the reference. The served model's metadata records the digests of the config
and weights it was exported with; a run against other ones is refused, not compared.

Per image: detection counts, whether the classes are identical and in the same order,
the largest box coordinate difference in pixels, the smallest and mean mask IoU over
the detections, the largest score difference.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bls.contract.tensors import PIPELINE_NAME
from export import samples

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# (height, width, extension, grayscale) of the generated scenes, cycled.
GENERATED = ((480, 640, ".jpg", False), (600, 400, ".png", False), (333, 517, ".jpg", False),
             (250, 250, ".png", True), (720, 1280, ".jpg", False))


@dataclass(frozen=True)
class ImageParity:
    """Hold the parity figures of one image.

    Attributes:
        image: the file's name.
        size: (height, width).
        served, reference: the detection counts.
        classes_identical: the same classes in the same order.
        max_box_diff_px: largest |coordinate difference| (inf when the counts differ).
        min_mask_iou, mean_mask_iou: over the detections (None without masks).
        max_score_diff: largest |score difference|.
        ok: all targets met.
    """

    image: str
    size: tuple[int, int]
    served: int
    reference: int
    classes_identical: bool
    max_box_diff_px: float
    min_mask_iou: float | None
    mean_mask_iou: float | None
    max_score_diff: float
    ok: bool


@dataclass
class ParityReport:
    """Hold a parity run: every image's figures and the targets.

    Attributes:
        rows: one ImageParity per image.
        box_tolerance: pixels.
        min_iou: the smallest mask IoU allowed.
        served: what the served model's metadata says (source, method, weights, ...).
    """

    rows: list[ImageParity]
    box_tolerance: float
    min_iou: float
    served: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether there were images and every one met the targets."""
        return bool(self.rows) and all(r.ok for r in self.rows)

    def lines(self) -> list[str]:
        """Render the report as text: the served model, the targets, a table, the verdict."""
        s = self.served
        out = [f"served: {s.get('source')} ({s.get('method')}, verified on {s.get('device')}), "
               f"weights {s.get('weights')}",
               f"targets: identical classes in the same order, boxes within {self.box_tolerance} px, "
               f"mask IoU >= {self.min_iou} on every detection",
               f"{'image':<28} {'size':>11} {'served':>6} {'d2':>4} {'classes':>9} "
               f"{'max box px':>11} {'min IoU':>9} {'mean IoU':>9} {'max score':>10}  ok"]
        for r in self.rows:
            iou = (f"{r.min_mask_iou:9.6f} {r.mean_mask_iou:9.6f}" if r.min_mask_iou is not None
                   else f"{'-':>9} {'-':>9}")
            out.append(f"{r.image[:28]:<28} {r.size[1]:>5}x{r.size[0]:<5} {r.served:>6} "
                       f"{r.reference:>4} {'identical' if r.classes_identical else 'DIFFER':>9} "
                       f"{r.max_box_diff_px:11.3g} {iou} {r.max_score_diff:10.3g}  "
                       f"{'yes' if r.ok else 'NO'}")
        out.append(f"parity: {'all targets met' if self.ok else 'TARGETS MISSED'}: met on "
                   f"{sum(r.ok for r in self.rows)} of {len(self.rows)} images")
        return out

    def to_json(self) -> str:
        """Render the report as JSON, one object per image."""
        return json.dumps({"served": self.served, "box_tolerance": self.box_tolerance,
                           "min_iou": self.min_iou, "ok": self.ok,
                           "images": [asdict(r) for r in self.rows]}, indent=2)


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Compute the IoU of each pair of masks.

    Args:
        a, b: bool [N, H, W].

    Returns:
        float64 [N]; 1.0 where both masks are empty.
    """
    a, b = a.astype(bool), b.astype(bool)
    inter = (a & b).sum(axis=(1, 2)).astype(np.float64)
    union = (a | b).sum(axis=(1, 2)).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def compare(name: str, served, reference: dict, box_tolerance: float = 0.01,
            min_iou: float = 0.99) -> ImageParity:
    """Compare the served answer for one image with DefaultPredictor's.

    Args:
        name: the image's name.
        served: client.results.Detections (mask_format rle or dense).
        reference: DefaultPredictor's instances as numpy (reference_answer): boxes
            float [N, 4], classes int [N], scores float [N], masks bool [N, H, W] or
            None, size (height, width).
        box_tolerance, min_iou: the targets.
    """
    from client.results import decode_masks

    n, m = len(served), len(reference["classes"])
    same_count = n == m
    classes_identical = same_count and bool(np.array_equal(served.classes, reference["classes"]))
    if same_count and n:
        box_diff = float(np.abs(served.boxes.astype(np.float64) - reference["boxes"]).max())
        score_diff = float(np.abs(served.scores.astype(np.float64) - reference["scores"]).max())
    else:
        box_diff = score_diff = 0.0 if same_count else float("inf")
    min_iou_seen = mean_iou = None
    masks_ok = True
    if reference["masks"] is not None:
        if same_count and served.has_masks:
            ious = mask_ious(decode_masks(served), reference["masks"]) if n else np.ones(0)
            min_iou_seen = float(ious.min()) if n else 1.0
            mean_iou = float(ious.mean()) if n else 1.0
            masks_ok = min_iou_seen >= min_iou
        else:
            masks_ok = False
    elif served.has_masks and n:  # a model without masks must not answer masks
        masks_ok = False
    ok = (classes_identical and box_diff <= box_tolerance and masks_ok
          and tuple(served.image_size) == tuple(reference["size"]))
    return ImageParity(name, tuple(reference["size"]), n, m, classes_identical, box_diff,
                       min_iou_seen, mean_iou, score_diff, ok)


def predictor(cfg, weights: Path):
    """Build detectron2's DefaultPredictor for ``cfg`` (from detectron2_maskrcnn.load_config)
    with ``weights``, on the CPU."""
    from detectron2.engine import DefaultPredictor

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return DefaultPredictor(cfg)


def reference_answer(pred, path: Path) -> dict:
    """Run DefaultPredictor on the file at ``path``, read as detectron2's demo reads it.

    ``read_image(path, format="BGR")``: PIL, EXIF orientation applied.

    Returns:
        boxes float64 [N, 4] in original pixels, classes int64 [N], scores float32 [N],
        masks bool [N, H, W] or None, size (height, width).
    """
    import torch
    from detectron2.data.detection_utils import read_image

    image = read_image(str(path), format="BGR")
    with torch.no_grad():
        inst = pred(image)["instances"].to("cpu")
    return {"boxes": inst.pred_boxes.tensor.numpy().astype(np.float64),
            "classes": inst.pred_classes.numpy(), "scores": inst.scores.numpy(),
            "masks": inst.pred_masks.numpy() if inst.has("pred_masks") else None,
            "size": tuple(image.shape[:2])}


def collect_images(paths: Sequence[Path]) -> list[Path]:
    """List the parity images: files as given, each folder's IMAGE_SUFFIXES files sorted.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"image path {p}: no such file or folder")
    return out


def generate_images(folder: Path, count: int) -> list[Path]:
    """Write ``count`` generated scenes to ``folder`` (JPEG and PNG, several sizes, one
    grayscale); return their paths.

    The same bytes go to both sides.
    """
    paths = []
    for i in range(count):
        h, w, ext, gray = GENERATED[i % len(GENERATED)]
        image = samples.scene(h, w, seed=100 + i)
        if gray:
            image = image[:, :, 1]
        path = folder / f"generated_{i}_{w}x{h}{'_gray' if gray else ''}{ext}"
        path.write_bytes(samples.encode(image, ext))
        paths.append(path)
    return paths


def served_metadata(url: str, protocol: str):
    """Read the served pipeline's model metadata.

    Raises:
        ValueError: it has none.
    """
    from client.cli import fetch_model

    served = asyncio.run(fetch_model(url, protocol, PIPELINE_NAME))
    if served.meta is None:
        raise ValueError(f"{PIPELINE_NAME} at {url} has no model metadata")
    return served.meta


def check_same_model(meta, cfg, weights: Path) -> None:
    """Refuse to compare a served model exported from another config or other weights.

    Raises:
        ValueError: naming what differs.
    """
    from export.detectron2_maskrcnn import config_digest, file_digest

    problems = []
    if meta.extra.get("config_sha256") != config_digest(cfg):
        problems.append("the config (with --opts) differs from the export's")
    if meta.extra.get("weights_sha256") != file_digest(weights):
        problems.append(f"{weights.name} is not the file the model was exported with "
                        f"({meta.weights})")
    if problems:
        raise ValueError("parity: the served model is not this config and these weights: "
                         + "; ".join(problems))


def compare_served(url: str, protocol: str, cfg, weights: Path, paths: Sequence[Path],
                   score_threshold: float = 0.0, box_tolerance: float = 0.01,
                   min_iou: float = 0.99, log=print) -> ParityReport:
    """Send each image to the served pipeline and to DefaultPredictor, and compare them.

    Args:
        url, protocol: the server.
        cfg: from detectron2_maskrcnn.load_config, as the export's.
        weights: the weights the served model was exported with.
        paths: the image files.
        score_threshold: request parameter of every pipeline request.
        box_tolerance, min_iou: the targets.
        log: prints each image's outcome.

    Raises:
        ValueError: the served model has no metadata, or is not this config and these
            weights.
    """
    from client.cli import infer_bytes

    meta = served_metadata(url, protocol)
    check_same_model(meta, cfg, weights)
    pred = predictor(cfg, weights)
    rows = []
    for path in paths:
        served = asyncio.run(infer_bytes(url, protocol, PIPELINE_NAME, Path(path).read_bytes(),
                                         {"score_threshold": score_threshold}))
        row = compare(Path(path).name, served, reference_answer(pred, Path(path)),
                      box_tolerance, min_iou)
        log(f"  {row.image}: {row.served} vs {row.reference} detections, "
            f"{'ok' if row.ok else 'MISSED'}")
        rows.append(row)
    info = {"source": meta.source, "method": meta.extra.get("method"), "device": meta.device,
            "weights": meta.weights, "score_threshold_requested": score_threshold,
            "score_thresh_test": meta.extra.get("score_thresh_test"),
            "min_size": meta.min_size, "max_size": meta.max_size,
            "channel_order": meta.channel_order}
    return ParityReport(rows, box_tolerance, min_iou, info)


def run(config: str, weights: Path, opts: Sequence[str] = (), repository: Path | None = None,
        url: str | None = None, protocol: str = "grpc", images: Sequence[Path] = (),
        generated: int = 0, score_threshold: float = 0.0, python: Path | None = None,
        box_tolerance: float = 0.01, min_iou: float = 0.99, log=print) -> ParityReport:
    """Run the parity command against a server at ``url``, or an embedded one on
    ``repository`` (free loopback ports, stopped at the end).

    Raises:
        ValueError: no images, or the served model is not this config and these weights.
    """
    from export.detectron2_maskrcnn import load_config

    cfg = load_config(config, opts)
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        paths = collect_images(images) + generate_images(Path(tmp), generated)
        if not paths:
            raise ValueError("parity: no images (give --images and/or --generated N)")
        if url:
            return compare_served(url, protocol, cfg, weights, paths, score_threshold,
                                  box_tolerance, min_iou, log)
        from server.launcher import TritonServer

        extra = ("--python", str(python)) if python else ()
        log(f"starting an embedded server on {repository} ...")
        with TritonServer(repository, extra_args=extra) as server:
            address = server.grpc_url if protocol == "grpc" else server.http_url
            return compare_served(address, protocol, cfg, weights, paths, score_threshold,
                                  box_tolerance, min_iou, log)
