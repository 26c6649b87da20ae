"""A stand-in mask_rcnn: the real contract and plausible outputs, answered after a chosen
latency (a GPU's) without a core or weights. ``python -m export standin`` assembles a repository
around it: to size pipeline_bls for a GPU model on any machine (``benchmarks.sweep --stand-in``),
or to carry a deployment's plumbing before the model is ready. This file is also its model.py."""

import functools
import json
import time
from pathlib import Path

import numpy as np


def synthetic_outputs(n: int, height: int, width: int, m: int | None) -> dict[str, np.ndarray]:
    """Make n plausible detections for a [3, height, width] input, seeded (the same each call).

    Returns:
        By field: boxes float32 [n, 4] inside the input, classes int64 [n] (COCO 1..90),
        scores float32 [n] descending in [0.5, 1), image_size int64 [2], and unless m is
        None masks float32 [n, 1, m, m], a Gaussian blob each.
    """
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
    """Give synthetic_outputs by contract name (``names``), cached per input size, so that
    the stand-in costs nothing but its latency."""
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
    """Describe the stand-in as torchvision's Mask R-CNN (COCO names, RGB) with this mask size
    (None: no masks) and resize."""
    from bls.contract.metadata import ModelMetadata
    from export.torchvision_maskrcnn import COCO_CATEGORIES as NAMES

    return ModelMetadata("stand-in", "RGB", min_size, max_size, mask_resolution, NAMES,
                         tuple(range(len(NAMES))))


def make_repository(repository: Path, latency_ms: float, detections: int = 20,
                    mask_resolution: int | None = 28, min_size: int = 800, max_size: int = 1333,
                    overrides=None, execution_env=None) -> Path:
    """(Re)build ``repository`` with the stand-in as mask_rcnn, its settings in standin.json.

    Every other model is the real one (export.repository.assemble, with ``overrides`` and
    ``execution_env`` as there); the stand-in answers ``detections`` detections with
    [N, 1, M, M] masks (M = ``mask_resolution``, None: no masks) after ``latency_ms``.

    Returns:
        The repository's resolved path.
    """
    import torch

    from export.repository import VERSION, assemble, staged_model_file
    from export.torchscript import save

    with staged_model_file(repository) as staging:  # TorchScript only to carry the metadata
        save(torch.jit.script(torch.nn.Identity()), metadata(mask_resolution, min_size, max_size),
             staging)
        repository = assemble(staging, repository, overrides, execution_env)
    version = repository / "mask_rcnn" / VERSION
    (version / "model.py").write_text(Path(__file__).read_text())
    (version / "standin.json").write_text(json.dumps(
        {"latency_ms": latency_ms, "detections": detections, "mask_resolution": mask_resolution}))
    return repository
