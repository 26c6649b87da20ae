"""Define the tensor contract of every model once: names, dtypes, shapes and order.

Export, repository assembly, pipeline_bls, the ensemble, the client and the tests all
read tensor names, dtypes, shapes and order from here; nothing else spells them.

Two contracts:

* ``mask_rcnn`` (the exported TorchScript model) follows detectron2's traced Mask R-CNN:
  one image in, Instances fields sorted by name out, then ``image_size``
  (see detectron2/export/flatten.py). The ``__<index>`` suffixes are the libtorch
  backend's naming rule: an output's index is its position in the returned tuple.
* ``pipeline_bls`` / ``infer_pipeline`` (what clients call): encoded image bytes in,
  detections in original-image pixels out.

Shapes exclude the batch dimension; ``-1`` is variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Declare one tensor.

    Attributes:
        name: the tensor's name in the model config.
        dtype: Triton's dtype name.
        dims: the shape without the batch dim; -1 is variable.
        doc: one line for the README and the configs.
    """

    name: str
    dtype: str  # Triton's dtype name: UINT8, INT64, FP32, BYTES
    dims: tuple[int, ...]
    doc: str

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of the tensor (object for BYTES)."""
        return np.dtype(_NUMPY_DTYPES[self.dtype])

    @property
    def config_type(self) -> str:
        """The model-config (config.pbtxt) spelling of the dtype."""
        return "TYPE_STRING" if self.dtype == "BYTES" else f"TYPE_{self.dtype}"


_NUMPY_DTYPES = {"UINT8": np.uint8, "INT64": np.int64, "FP32": np.float32, "BYTES": np.object_}

# --------------------------------------------------------------------------- mask_rcnn
MODEL_NAME = "mask_rcnn"

MODEL_INPUT = TensorSpec(
    "image__0", "UINT8", (3, -1, -1),
    "one image, already resized by the pipeline, channel order as the export declares "
    "(ModelMetadata.channel_order); the model normalises and pads internally",
)


def model_outputs(mask_resolution: int | None) -> tuple[TensorSpec, ...]:
    """Declare the outputs of the exported model, in tuple order.

    Args:
        mask_resolution: M of the mask head (28 for the standard heads), or None for a
            model without masks (Faster R-CNN), whose ``masks`` output is absent:
            detectron2 then flattens pred_boxes, pred_classes, scores, image_size.
    """
    fields = [
        ("boxes", "FP32", (-1, 4), "x1,y1,x2,y2 in model-input pixels"),
        ("classes", "INT64", (-1,), "class index into ModelMetadata.class_names"),
    ]
    if mask_resolution is not None:
        fields.append(("masks", "FP32", (-1, 1, mask_resolution, mask_resolution),
                       "mask-head probabilities in the box frame, not pasted"))
    fields += [
        ("scores", "FP32", (-1,), "detection confidence, sorted descending"),
        ("image_size", "INT64", (2,), "height,width of the model input, unpadded"),
    ]
    return tuple(TensorSpec(f"{name}__{i}", dtype, dims, doc)
                 for i, (name, dtype, dims, doc) in enumerate(fields))


def model_output(outputs: tuple[TensorSpec, ...], field: str) -> TensorSpec | None:
    """Find the output whose name (without its ``__<index>``) is ``field``; None if none."""
    for spec in outputs:
        if spec.name.rsplit("__", 1)[0] == field:
            return spec
    return None


# --------------------------------------------------------------------------- pipeline
PIPELINE_NAME = "pipeline_bls"
ENSEMBLE_NAME = "infer_pipeline"
PREPROCESS_NAME = "preprocess"
POSTPROCESS_NAME = "postprocess"

PIPELINE_INPUT = TensorSpec("image", "BYTES", (1,), "one encoded image (JPEG, PNG, ...)")

PIPELINE_OUTPUTS = (
    TensorSpec("boxes", "FP32", (-1, 4), "x1,y1,x2,y2 in original-image pixels"),
    TensorSpec("scores", "FP32", (-1,), "detection confidence, descending"),
    TensorSpec("classes", "INT64", (-1,), "class index into the model's class names"),
    TensorSpec("class_names", "BYTES", (-1,), "UTF-8 class name per detection"),
    TensorSpec("masks_rle", "BYTES", (-1,),
               "COCO compressed RLE counts per detection (size = image_size); "
               "empty unless mask_format=rle"),
    TensorSpec("masks", "UINT8", (-1, -1, -1),
               "dense 0/1 masks [N,H,W]; N=0 unless mask_format=dense"),
    TensorSpec("image_size", "INT64", (2,), "height,width of the original image"),
    TensorSpec("masks_polygon", "BYTES", (-1,),
               "COCO polygons per detection, JSON: a list of [x1,y1,x2,y2,...] outlines in "
               "original-image pixel coordinates, one per separate part, holes joined in "
               "by keyholes (pycocotools decodes them to the exact mask); empty unless "
               "mask_format=polygon"),
    TensorSpec("masks_box", "UINT8", (-1,),
               "each mask cropped to its window, 0/1, row-major, the crops one after the "
               "other (mask i: mask_windows[i] height x width values); empty unless "
               "mask_format=box"),
    TensorSpec("mask_windows", "INT64", (-1, 4),
               "x0,y0,width,height of each crop of masks_box in original-image pixels; "
               "N rows when mask_format=box, else 0"),
)

# The ensemble's internal tensor between preprocess and postprocess (the model's own
# tensors are wired by name from model_outputs()).
ORIGINAL_SIZE = TensorSpec("original_size", "INT64", (2,), "height,width of the decoded image")


class MaskFormat(str, Enum):
    """Say how the answer carries the masks (the outputs above).

    rle (masks_rle), dense (masks), polygon (masks_polygon), box (masks_box +
    mask_windows), none."""

    RLE = "rle"
    DENSE = "dense"
    POLYGON = "polygon"
    BOX = "box"
    NONE = "none"


# --------------------------------------------------------------------------- monitoring
MONITORING_NAME = "monitoring"

# What pipeline_bls sends about one answered request (an "event"), and what a watcher
# sends instead (a "command"). Every input is optional in the config: an event leaves
# out ``command``, a command sends only ``command``.
MONITORING_INPUTS = (
    TensorSpec("reasons", "BYTES", (-1,),
               "why the policy sent this request: sampled, low_score, no_detections, "
               "watched_class, slow"),
    TensorSpec("scores", "FP32", (-1,), "the answer's scores, descending"),
    TensorSpec("classes", "INT64", (-1,), "the answer's class indices"),
    TensorSpec("latency_ms", "FP32", (1,), "pipeline_bls time for the request"),
    TensorSpec("image", "BYTES", (-1,),
               "[1] the encoded image when the policy captures samples, else [0]"),
    TensorSpec("predictions", "BYTES", (-1,),
               "[1] the answer as JSON (boxes, scores, classes, class_names, masks_rle, "
               "image_size) when captured, else [0]"),
    TensorSpec("command", "BYTES", (1,),
               "a watcher's command instead of an event: 'stats' (one answer), "
               "'subscribe' (alerts as they happen) or 'reset_reference' (start a new "
               "drift reference window)"),
)

MONITORING_OUTPUT = TensorSpec("message", "BYTES", (1,),
                               "JSON: {'type': 'stats' | 'alert' | 'end', ...}")
