"""A stand-in mask_rcnn: plausible outputs after a chosen latency (a GPU's), as model.py."""

import functools
import json
import time
from pathlib import Path

import numpy as np


def synthetic_outputs(n: int, height: int, width: int, m: int | None) -> dict[str, np.ndarray]:
    """Outputs by field for a [3, height, width] input; masks [n, 1, m, m] unless m is None."""
    rng = np.random.default_rng(0)
    bw, bh = rng.uniform(0.05, 0.5, n) * width, rng.uniform(0.05, 0.5, n) * height
    x1, y1 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
    out = {"boxes": np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32),
           "classes": rng.integers(1, 91, n).astype(np.int64)}
    if m is not None:  # a Gaussian blob each
        grid = (np.arange(m) + 0.5) / m
        cy, cx = rng.uniform(0.3, 0.7, (2, n, 1, 1))
        sy, sx = rng.uniform(0.1, 0.3, (2, n, 1, 1))
        blobs = np.exp(-((grid[:, None] - cy) / sy) ** 2 / 2 - ((grid - cx) / sx) ** 2 / 2)
        out["masks"] = blobs[:, None].astype(np.float32)
    scores = np.sort(rng.uniform(0.5, 1.0, n).astype(np.float32))[::-1].copy()
    return out | {"scores": scores, "image_size": np.array([height, width], np.int64)}


@functools.cache
def standin_outputs(names: tuple[str, ...], n: int, m: int | None, height: int, width: int):
    """Outputs by contract name for an input size, cached: it costs nothing but its latency."""
    fields = synthetic_outputs(n, height, width, m)
    return {name: fields[name.rsplit("__", 1)[0]] for name in names}


class TritonPythonModel:
    """mask_rcnn/1/model.py of a stand-in repository: answers after the latency it is given."""

    def initialize(self, args):
        path = Path(args["model_repository"], args["model_version"], "standin.json")
        v, config = json.loads(path.read_text()), json.loads(args["model_config"])
        self.latency_s = v["latency_ms"] / 1000
        self.key = tuple(o["name"] for o in config["output"]), v["detections"], v["mask_resolution"]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            *_, height, width = request.inputs()[0].shape()
            outputs = standin_outputs(*self.key, height, width)
            time.sleep(self.latency_s)  # the outputs are cached: this is the whole latency
            tensors = [pb_utils.Tensor(k, v) for k, v in outputs.items()]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses


def metadata(mask_resolution: int | None, min_size: int = 800, max_size: int = 1333):
    """ModelMetadata of torchvision's Mask R-CNN (COCO names, RGB) with this mask size."""
    from bls.contract.metadata import ModelMetadata
    from export.torchvision_maskrcnn import COCO_CATEGORIES as NAMES

    return ModelMetadata("stand-in", "RGB", min_size, max_size, mask_resolution, NAMES,
                         tuple(range(len(NAMES))))


def make_repository(repository, detections, mask_resolution, min_size, max_size, latency_ms):
    """Assemble ``repository`` with the stand-in as mask_rcnn, its settings in standin.json."""
    import torch
    from export.repository import VERSION, assemble
    from export.torchscript import save

    repository.mkdir(parents=True)
    model = repository / "model.pt"  # TorchScript only to carry the metadata assemble reads
    meta = metadata(mask_resolution, min_size, max_size)
    save(torch.jit.script(torch.nn.Identity()), meta, model)
    version = assemble(model, repository) / "mask_rcnn" / VERSION
    (version / "model.py").write_text(Path(__file__).read_text())
    (version / "standin.json").write_text(json.dumps(
        {"latency_ms": latency_ms, "detections": detections, "mask_resolution": mask_resolution}))
    return repository
