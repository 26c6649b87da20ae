"""Read the model's detections as arrays (``Instances``) and bring them to original pixels.

``Instances`` is named as detectron2 names it; the model's outputs are in model-input
pixels.

``from_model_outputs`` reads them by contract name; ``select`` applies the request's
score threshold and detection cap; ``rescale`` is detectron2's ``detector_postprocess``:
scale boxes to the original size, clip them to it, drop empty ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from bls.contract.metadata import ModelMetadata
from bls.contract.tensors import model_output
from bls.pipeline.host import HOST, HostOps


@dataclass(frozen=True)
class Instances:
    """Hold one image's detections.

    Attributes:
        boxes: float32 [N, 4] (x1, y1, x2, y2) in pixels.
        scores: float32 [N].
        classes: int64 [N], indices into the model's class names.
        masks: float32 [N, M, M] mask-head probabilities (numpy, or a torch tensor on the
            device strategy's device), or None for a model without masks.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, keep: np.ndarray) -> "Instances":
        """Keep the detections ``keep`` selects (int64 [K] indices or bool [N])."""
        return Instances(self.boxes[keep], self.scores[keep], self.classes[keep],
                          None if self.masks is None else self.masks[keep])


def from_model_outputs(outputs: Mapping[str, object], meta: ModelMetadata,
                       ops: HostOps = HOST) -> tuple[Instances, tuple[int, int]]:
    """Read the model's outputs into Instances, in model-input pixels.

    Args:
        outputs: output tensors by contract name (bls/contract/tensors.py MODEL_OUTPUTS):
            boxes float32 [N, 4], classes int64 [N], masks float32 [N, 1, M, M], scores
            float32 [N], image_size int64 [2].
        meta: the model's metadata (which outputs, M).
        ops: where the outputs are (HOST, or a DeviceOps); the masks stay there,
            everything else comes to the host.

    Returns:
        (Instances, model-input (height, width)).

    Raises:
        ValueError: the outputs disagree on the detection count.
    """
    specs = meta.outputs

    def get(field: str) -> np.ndarray:
        spec = model_output(specs, field)
        return ops.to_host(outputs[spec.name]).astype(spec.numpy_dtype, copy=False)

    boxes = get("boxes").reshape(-1, 4)
    scores = get("scores").reshape(-1)
    classes = get("classes").reshape(-1)
    masks = None
    if meta.has_masks:
        masks = ops.keep_masks(outputs[model_output(specs, "masks").name], meta.mask_resolution)
    n = len(scores)
    if not (len(boxes) == len(classes) == n and (masks is None or len(masks) == n)):
        raise ValueError(f"model outputs disagree on the detection count: boxes {len(boxes)}, "
                         f"classes {len(classes)}, scores {n}, "
                         f"masks {None if masks is None else len(masks)}")
    height, width = (int(v) for v in get("image_size").reshape(2))
    return Instances(boxes, scores, classes, masks), (height, width)


def select(det: Instances, score_threshold: float, max_detections: int | None) -> Instances:
    """Keep scores >= score_threshold, then the max_detections highest (stable order)."""
    keep = np.flatnonzero(det.scores >= score_threshold)
    keep = keep[np.argsort(-det.scores[keep], kind="stable")]
    if max_detections is not None:
        keep = keep[:max_detections]
    return det.take(keep)


def rescale(det: Instances, input_size: tuple[int, int], output_size: tuple[int, int]
            ) -> Instances:
    """Bring boxes to the original image, as detectron2's detector_postprocess.

    Scales (in float32, as torch does), clips to the output image, drops boxes with zero
    width or height.

    Args:
        det: detections with boxes float32 [N, 4] in model-input pixels.
        input_size: (height, width) of the model input.
        output_size: (height, width) of the original image.
    """
    in_h, in_w = input_size
    out_h, out_w = output_size
    boxes = det.boxes.astype(np.float32, copy=True)
    boxes[:, 0::2] *= np.float32(out_w / in_w)
    boxes[:, 1::2] *= np.float32(out_h / in_h)
    np.clip(boxes[:, 0::2], 0, out_w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, out_h, out=boxes[:, 1::2])
    rescaled = Instances(boxes, det.scores, det.classes, det.masks)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return rescaled if nonempty.all() else rescaled.take(nonempty)
