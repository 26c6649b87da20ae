"""torchvision's maskrcnn_resnet50_fpn, cut to detectron2's traced Mask R-CNN contract.

torchvision's MaskRCNN resizes inside its forward and pastes masks at the end; the
pipeline does both itself (resize as detectron2 does, paste only inside boxes), so the
wrapper runs normalise -> pad -> backbone -> RPN -> ROI heads and returns the ROI heads'
outputs: boxes in input pixels and [N, 1, 28, 28] mask probabilities, not pasted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.resnet import resnet50
from torchvision.ops import misc as misc_nn_ops

from export import exporter

log = logging.getLogger(__name__)

COCO_CATEGORIES = tuple(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
CHANNEL_ORDER = "RGB"  # torchvision's detection models are trained on RGB in [0, 1]
MASK_RESOLUTION = 28  # torchvision's MaskRCNNHeads output (RoIAlign 14 x 14, upsampled x2)


class TorchvisionMaskRCNN(nn.Module):
    """Run torchvision's Mask R-CNN without its resize and paste: normalise, pad, backbone,
    RPN, ROI heads."""

    def __init__(self, model: MaskRCNN):
        super().__init__()
        self.transform = model.transform
        self.backbone = model.backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Detect in one image.

        Args:
            image: uint8 [3, H, W] RGB, already resized.

        Returns:
            boxes float32 [N, 4] (input pixels), classes int64 [N], masks float32
            [N, 1, 28, 28] mask-head probabilities, scores float32 [N], image_size int64 [2].
        """
        height, width = image.shape[-2], image.shape[-1]
        x = self.transform.normalize(image.float() / 255.0)
        batch = self.transform.batch_images([x], size_divisible=self.transform.size_divisible)
        images = ImageList(batch, [(height, width)])
        features = self.backbone(images.tensors)
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        d = detections[0]
        image_size = torch.tensor([height, width], dtype=torch.int64)
        return d["boxes"], d["labels"], d["masks"], d["scores"], image_size


def _num_classes(state_dict: dict) -> int:
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise ValueError(f"checkpoint has no {key!r}: not a torchvision Mask R-CNN state dict "
                         f"(first keys: {list(state_dict)[:3]})")
    return int(state_dict[key].shape[0])


def load_state_dict(path: Path) -> dict:
    """Load a torchvision Mask R-CNN state dict from ``path``: a bare state dict or one
    under "model" / "state_dict" (torchvision's reference training scripts use "model").

    Raises:
        ValueError: the file holds no state dict.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(checkpoint).__name__}")
    return checkpoint


def build(checkpoint: Path | None = None, pretrained: bool = False, seed: int = 0,
          box_score_thresh: float = 0.05, detections_per_img: int = 100,
          proposals: int = 1000) -> tuple[MaskRCNN, str]:
    """Build torchvision's Mask R-CNN in eval mode, with its weights.

    ``proposals`` is the RPN's post-NMS count at test time (torchvision's
    rpn_post_nms_top_n_test): the box head runs on each, so it sets the model's cost at
    small input sizes. Nothing is downloaded unless ``pretrained`` is set (then torchvision's COCO weights
    are fetched). Without a checkpoint or ``pretrained``, weights are a seeded random
    initialisation: the pipeline works, the detections mean nothing.

    Returns:
        (the model, a description of its weights).

    Raises:
        ValueError: ``checkpoint`` is not a torchvision Mask R-CNN state dict.
    """
    kwargs = dict(box_score_thresh=box_score_thresh, box_detections_per_img=detections_per_img,
                  rpn_post_nms_top_n_test=proposals)
    if pretrained:
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        model = maskrcnn_resnet50_fpn(weights=MaskRCNN_ResNet50_FPN_Weights.COCO_V1, **kwargs)
        return model.eval(), "torchvision COCO_V1 (downloaded)"
    state = load_state_dict(checkpoint) if checkpoint is not None else None
    num_classes = _num_classes(state) if state is not None else len(COCO_CATEGORIES)
    torch.manual_seed(seed)
    # FrozenBatchNorm2d, as torchvision builds trained models (and as its checkpoints
    # expect); weights_backbone stays None so nothing is downloaded.
    backbone = resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    model = MaskRCNN(_resnet_fpn_extractor(backbone, 3), num_classes=num_classes, **kwargs)
    if state is None:
        return model.eval(), f"random initialisation (seed {seed}); detections are meaningless"
    model.load_state_dict(state)
    return model.eval(), f"checkpoint {Path(checkpoint).name}"


def class_names(num_classes: int, names_file: Path | None = None) -> tuple[str, ...]:
    """Name the classes: COCO's 91 torchvision categories, names from a file (one per
    line), or class_<i>.

    Raises:
        ValueError: ``names_file`` does not hold ``num_classes`` names.
    """
    if names_file is not None:
        return exporter.names_from_file(names_file, num_classes, "index 0 is the background")
    if num_classes == len(COCO_CATEGORIES):
        return COCO_CATEGORIES
    return tuple(f"class_{i}" for i in range(num_classes))
