"""Record what the pipeline must know about an exported model (``ModelMetadata``).

The export writes this as JSON inside the TorchScript file (an extra file, ignored by
the libtorch backend) and the repository assembly copies it into the configs of the
models that consume it (parameter ``model_metadata``), so each model directory stays
self-contained. pipeline_bls, preprocess and postprocess read it at load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from bls.contract.tensors import model_outputs

METADATA_PARAMETER = "model_metadata"  # config.pbtxt parameter key
METADATA_FILE = "mask_rcnn.json"  # name inside the TorchScript archive's extra/ folder

CHANNEL_ORDERS = ("BGR", "RGB")


@dataclass(frozen=True)
class ModelMetadata:
    """Describe an exported model: its input, its resize, its masks and its classes.

    Attributes:
        source: what the export was made from.
        channel_order: order of the model's input channels (detectron2 INPUT.FORMAT;
            torchvision models are RGB).
        min_size, max_size: ResizeShortestEdge parameters (detectron2 MIN_SIZE_TEST,
            MAX_SIZE_TEST): the short edge becomes min_size unless the long edge would
            exceed max_size.
        mask_resolution: M of the float32 [N, 1, M, M] mask-head output, or None without
            masks.
        class_names: name per class index the model emits.
        category_ids: dataset category id per class index (COCO results' category_id).
        score_threshold: default for requests that do not set one.

    Raises:
        ValueError: the values are inconsistent (named in the message).
    """

    source: str
    channel_order: str
    min_size: int
    max_size: int
    mask_resolution: int | None
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    score_threshold: float = 0.5
    weights: str = ""
    torch_version: str = ""
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        problems = []
        if self.channel_order not in CHANNEL_ORDERS:
            problems.append(f"channel_order={self.channel_order!r} is not one of {CHANNEL_ORDERS}")
        if not (0 < self.min_size <= self.max_size):
            problems.append(f"need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.mask_resolution is not None and self.mask_resolution <= 0:
            problems.append(f"mask_resolution={self.mask_resolution} must be positive or None")
        if len(self.category_ids) != len(self.class_names):
            problems.append(f"{len(self.category_ids)} category_ids for "
                            f"{len(self.class_names)} class_names")
        if not 0.0 <= self.score_threshold <= 1.0:
            problems.append(f"score_threshold={self.score_threshold} is outside [0, 1]")
        if problems:
            raise ValueError("invalid model metadata: " + "; ".join(problems))

    @property
    def has_masks(self) -> bool:
        """Whether the model has a mask head."""
        return self.mask_resolution is not None

    @property
    def outputs(self):
        """The model's output TensorSpecs (bls/contract/tensors.py model_outputs)."""
        return model_outputs(self.mask_resolution)

    def class_name(self, index: int) -> str:
        """Name a class index; ``class_<index>`` for one outside class_names."""
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class_{index}"

    def to_json(self) -> str:
        """Serialise as JSON, the form the export stores."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelMetadata":
        """Read the JSON that ``to_json`` wrote."""
        data = json.loads(text)
        data["class_names"] = tuple(data["class_names"])
        data["category_ids"] = tuple(int(i) for i in data["category_ids"])
        return cls(**data)

    @classmethod
    def from_model_config(cls, model_config: dict) -> "ModelMetadata":
        """Read it from a model's config as Triton hands it to ``initialize``.

        Raises:
            ValueError: the config has no ``model_metadata`` parameter.
        """
        try:
            text = model_config["parameters"][METADATA_PARAMETER]["string_value"]
        except KeyError:
            raise ValueError(
                f"model {model_config.get('name')!r} has no '{METADATA_PARAMETER}' parameter: "
                "assemble the repository with `python -m export`") from None
        return cls.from_json(text)
