"""A stand-in for mask_rcnn: the real contract, plausible outputs, a chosen latency (a GPU's
milliseconds, which this CPU cannot show). ``make_repository`` assembles a full repository
around it, this file copied as mask_rcnn/1/model.py (TritonPythonModel below)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def blob_masks(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [n, m, m] in [0, 1]: 1-3 smooth Gaussian blobs each plus a little noise."""
    yy, xx = np.meshgrid(*[(np.arange(m, dtype=np.float32) + 0.5) / m] * 2, indexing="ij")
    masks = np.empty((n, m, m), np.float32)
    for i in range(n):
        p = np.zeros((m, m), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            (cy, cx), (sy, sx) = rng.uniform(0.25, 0.75, 2), rng.uniform(0.12, 0.3, 2)
            p += rng.uniform(0.6, 1.0) * np.exp(-((yy - cy) ** 2 / (2 * sy ** 2) + (xx - cx) ** 2 / (2 * sx ** 2)))
        masks[i] = np.clip(p + rng.normal(0, 0.02, (m, m)).astype(np.float32), 0, 1)
    return masks

def synthetic_outputs(n: int, height: int, width: int, m: int | None, num_classes: int = 91,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Model outputs by field for a [3, height, width] input: boxes float32 [n, 4] (each side
    5-50 % of the image's, inside it), classes int64 [n] in 1..num_classes-1, masks float32
    [n, 1, m, m] (none when m is None), scores float32 [n] in [0.5, 1) descending, image_size
    int64 [2]."""
    rng = np.random.default_rng(seed)
    bw, bh = rng.uniform(0.05, 0.5, n) * width, rng.uniform(0.05, 0.5, n) * height
    x1, y1 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
    out = {"boxes": np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32),
           "classes": rng.integers(1, num_classes, n).astype(np.int64)}
    if m is not None:
        out["masks"] = blob_masks(n, m, rng)[:, None]
    return out | {"scores": np.sort(rng.uniform(0.5, 1.0, n).astype(np.float32))[::-1].copy(),
                  "image_size": np.array([height, width], np.int64)}

class StandIn:
    """Outputs by contract name for an input size, cached (it costs nothing but its latency)."""

    def __init__(self, output_names: list[str], detections: int, mask_resolution: int | None, num_classes: int = 91):
        self.names, self.args, self._cache = output_names, (detections, mask_resolution, num_classes), {}

    def __call__(self, height: int, width: int) -> dict[str, np.ndarray]:
        if (height, width) not in self._cache:
            n, m, classes = self.args
            fields = synthetic_outputs(n, height, width, m, classes)
            self._cache[height, width] = [fields[name.rsplit("__", 1)[0]] for name in self.names]
        return dict(zip(self.names, self._cache[height, width]))

class TritonPythonModel:
    """mask_rcnn/1/model.py of a stand-in repository: answers after ``latency_ms``."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        values = json.loads(config["parameters"]["standin"]["string_value"])
        self.latency_s, self.input_name = float(values["latency_ms"]) / 1000, config["input"][0]["name"]
        masks = [o for o in config["output"] if o["name"].startswith("masks__")]
        self.standin = StandIn([o["name"] for o in config["output"]], int(values["detections"]),
                               int(masks[0]["dims"][-1]) if masks else None)

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            started = time.perf_counter()
            shape = pb_utils.get_input_tensor_by_name(request, self.input_name).shape()
            outputs = self.standin(int(shape[-2]), int(shape[-1]))
            time.sleep(max(self.latency_s - (time.perf_counter() - started), 0))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()]))
        return responses

def metadata(mask_resolution: int | None, min_size: int = 800, max_size: int = 1333):
    """ModelMetadata of torchvision's Mask R-CNN (COCO names, RGB) with this mask size."""
    from bls.contract.metadata import ModelMetadata
    from export.torchvision_maskrcnn import COCO_CATEGORIES

    return ModelMetadata(source="stand-in", channel_order="RGB", min_size=min_size, max_size=max_size,
                         mask_resolution=mask_resolution, class_names=COCO_CATEGORIES,
                         category_ids=tuple(range(len(COCO_CATEGORIES))),
                         weights="none: benchmarks/standin.py answers synthetic detections")

def make_repository(repository: Path, detections: int, mask_resolution: int | None, min_size: int = 800,
                    max_size: int = 1333, latency_ms: float = 0.0) -> Path:
    """Assemble ``repository`` with the stand-in as mask_rcnn (embedded config)."""
    import torch

    from export.repository import VERSION, assemble
    from export.torchscript import save

    if detections < 0 or (mask_resolution is not None and mask_resolution < 1):
        raise ValueError(f"stand-in: need detections >= 0 and mask_resolution >= 1 or None; got "
                         f"{detections}, {mask_resolution}")
    scratch = Path(tempfile.mkdtemp(prefix="standin-"))
    try:  # a TorchScript file only to carry the metadata assemble() reads
        save(torch.jit.script(torch.nn.Identity()), metadata(mask_resolution, min_size, max_size),
             scratch / "model.pt")
        assemble(scratch / "model.pt", repository)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    version = repository / "mask_rcnn" / VERSION
    shutil.copyfile(__file__, version / "model.py")
    (version / "model.pt").unlink()
    configure(repository, latency_ms, detections)
    return repository

def configure(repository: Path, latency_ms: float, detections: int) -> None:
    """Set the stand-in's latency and detection count in its embedded config (the file is
    replaced, so a hard-linked copy's source stays as it was)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from export.repository import EMBEDDED_CONFIG

    if latency_ms < 0 or detections < 0:
        raise ValueError(f"stand-in: need latency_ms >= 0 and detections >= 0; got {latency_ms}, {detections}")
    path = repository / "mask_rcnn" / "configs" / f"{EMBEDDED_CONFIG}.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    config.parameters["standin"].string_value = json.dumps({"latency_ms": latency_ms, "detections": detections})
    path.with_suffix(".tmp").write_text(text_format.MessageToString(config))
    path.with_suffix(".tmp").replace(path)
