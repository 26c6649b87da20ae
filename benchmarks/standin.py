"""A stand-in for mask_rcnn: the real contract, plausible outputs, a chosen latency.

On a GPU, Mask R-CNN answers in milliseconds; on this CPU it takes seconds, which hides
what the Python pipeline itself costs. The stand-in answers after ``latency_ms`` (sleeping,
so one instance answers one request at a time, as a GPU model instance does) with
``detections`` boxes spread over the input, COCO classes, descending scores and
[N, 1, M, M] probability masks shaped like blobs (so pasting and encoding cost what real
masks cost), M = ``mask_resolution``.

``make_repository`` assembles a full repository (pipeline_bls, the ensemble, monitoring)
around it with export/repository.py, so every other model is the real one; only
``mask_rcnn/1/model.py`` is the stand-in (``standin_model.py``, with this file beside it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

MODEL_PY = Path(__file__).with_name("standin_model.py")


def blob_masks(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [n, m, m] in [0, 1]: 1-3 smooth Gaussian blobs each plus a little noise,
    so each 0.5 contour is a realistic outline, not noise."""
    grid = (np.arange(m, dtype=np.float32) + 0.5) / m
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    masks = np.empty((n, m, m), np.float32)
    for i in range(n):
        p = np.zeros((m, m), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.25, 0.75, 2)
            sy, sx = rng.uniform(0.12, 0.3, 2)
            p += rng.uniform(0.6, 1.0) * np.exp(-((yy - cy) ** 2 / (2 * sy ** 2)
                                                  + (xx - cx) ** 2 / (2 * sx ** 2)))
        p += rng.normal(0, 0.02, (m, m)).astype(np.float32)
        masks[i] = np.clip(p, 0, 1)
    return masks


def synthetic_outputs(n: int, height: int, width: int, m: int | None, num_classes: int = 91,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Model outputs by field for a [3, height, width] input, in contract order:
    boxes float32 [n, 4] (x1, y1, x2, y2, each side 5-50 % of the image's, inside it),
    classes int64 [n] in 1..num_classes-1, masks float32 [n, 1, m, m] (absent when m is
    None), scores float32 [n] in [0.5, 1) descending, image_size int64 [2]."""
    rng = np.random.default_rng(seed)
    bw = rng.uniform(0.05, 0.5, n) * width
    bh = rng.uniform(0.05, 0.5, n) * height
    x1 = rng.uniform(0, width - bw)
    y1 = rng.uniform(0, height - bh)
    out = {"boxes": np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32),
           "classes": rng.integers(1, num_classes, n).astype(np.int64)}
    if m is not None:
        out["masks"] = blob_masks(n, m, rng)[:, None]
    out["scores"] = np.sort(rng.uniform(0.5, 1.0, n).astype(np.float32))[::-1].copy()
    out["image_size"] = np.array([height, width], np.int64)
    return out


class StandIn:
    """Outputs by contract name for a model input, cached per input size (the stand-in
    must cost nothing but its latency)."""

    def __init__(self, output_names: list[str], detections: int, mask_resolution: int | None,
                 num_classes: int = 91):
        self.names = output_names
        self.detections = detections
        self.mask_resolution = mask_resolution
        self.num_classes = num_classes
        self._cache: dict[tuple[int, int], list[np.ndarray]] = {}

    def __call__(self, height: int, width: int) -> dict[str, np.ndarray]:
        key = (height, width)
        if key not in self._cache:
            fields = synthetic_outputs(self.detections, height, width, self.mask_resolution,
                                       self.num_classes)
            self._cache[key] = [fields[name.rsplit("__", 1)[0]] for name in self.names]
        return dict(zip(self.names, self._cache[key]))


def metadata(mask_resolution: int | None, min_size: int = 800, max_size: int = 1333):
    """ModelMetadata of torchvision's Mask R-CNN (COCO names, RGB) with this mask size."""
    from bls.contract.metadata import ModelMetadata
    from export.torchvision_maskrcnn import COCO_CATEGORIES

    return ModelMetadata(source="stand-in", channel_order="RGB", min_size=min_size,
                         max_size=max_size, mask_resolution=mask_resolution,
                         class_names=COCO_CATEGORIES,
                         category_ids=tuple(range(len(COCO_CATEGORIES))),
                         weights="none: benchmarks/standin.py answers synthetic detections")


def make_repository(repository: Path, detections: int, mask_resolution: int | None,
                    min_size: int = 800, max_size: int = 1333, latency_ms: float = 0.0) -> Path:
    """Assemble ``repository`` with the stand-in as mask_rcnn (embedded config)."""
    import torch

    from export.repository import VERSION, assemble
    from export.torchscript import save

    if detections < 0 or (mask_resolution is not None and mask_resolution < 1):
        raise ValueError(f"stand-in: need detections >= 0 and mask_resolution >= 1 or None; "
                         f"got {detections}, {mask_resolution}")
    scratch = Path(tempfile.mkdtemp(prefix="standin-"))
    try:
        # A TorchScript file only to carry the metadata that assemble() reads.
        model_file = scratch / "model.pt"
        save(torch.jit.script(torch.nn.Identity()),
             metadata(mask_resolution, min_size, max_size), model_file)
        assemble(model_file, repository)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    version = repository / "mask_rcnn" / VERSION
    shutil.copyfile(MODEL_PY, version / "model.py")
    shutil.copyfile(__file__, version / "standin.py")
    (version / "model.pt").unlink()
    configure(repository, latency_ms, detections)
    return repository


def configure(repository: Path, latency_ms: float, detections: int) -> None:
    """Set the stand-in's latency and detection count in its embedded config. The file
    is replaced, not written in place (a hard-linked copy's source stays as it was)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from export.repository import EMBEDDED_CONFIG

    if latency_ms < 0 or detections < 0:
        raise ValueError(f"stand-in: need latency_ms >= 0 and detections >= 0; got "
                         f"{latency_ms}, {detections}")
    path = repository / "mask_rcnn" / "configs" / f"{EMBEDDED_CONFIG}.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    config.parameters["standin"].string_value = json.dumps(
        {"latency_ms": latency_ms, "detections": detections})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text_format.MessageToString(config))
    tmp.replace(path)
