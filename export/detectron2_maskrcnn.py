"""Detectron2 R-CNN models (Mask R-CNN, Faster R-CNN) exported to the mask_rcnn contract.

detectron2 is not a dependency of the project: it is imported when one of these functions
runs (``import_detectron2``), so ``python -m export --help`` and the rest of the project
work without it. docs/detectron2.md says how to install it.

What the exported module computes is detectron2's own
``GeneralizedRCNN.inference(..., do_postprocess=False)``, the model part of
``DefaultPredictor``: it takes the image the predictor would hand its model (resized,
channel order of INPUT.FORMAT) as uint8 [3, H, W] and returns the Instances fields in
detectron2's flattened order (sorted by name, then image_size), which is the contract of
bls/contract/tensors.py. The pipeline then does what ``detector_postprocess`` does (rescale,
clip, paste masks at 0.5).

Tracing (default) uses detectron2's ``TracingAdapter`` around an inference function that
replaces ``ImageList.from_tensors`` by the same normalise-and-pad computed where the
image is, so the file runs on whichever device loads it (see ``traceable_inference`` and
export/detectron2_devices.py). Scripting uses ``scripting_with_instances``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor, nn

from bls.contract.metadata import CHANNEL_ORDERS, ModelMetadata
from export import exporter, samples
from export.detectron2_devices import hardcoded_cuda, host_device_mixing
from export.torchscript import save
from export.verify import ExportMismatch, check_outputs, compare

INSTALL_HINT = ("detectron2 is not installed: it is not on PyPI; build it from source as "
                "docs/detectron2.md describes")
META_ARCHITECTURES = ("GeneralizedRCNN",)  # what the contract can carry (see check_supported)
MASK_HEADS = ("MaskRCNNConvUpsampleHead",)
METHODS = {"trace": "traced", "script": "scripted"}
# Instances fields the export may meet, for scripting_with_instances (detectron2's list).
SCRIPT_FIELDS_NAMES = ("proposal_boxes", "objectness_logits", "pred_boxes", "scores",
                       "pred_classes", "pred_masks")
# Torch inside NVIDIA's tritonserver container (docs/serving.md, "Torch version rule"): the
# libtorch that loads model.pt in container mode must be at least the export's torch.
CONTAINER_TORCH = {"24.12": "2.6.0"}
DEFAULT_CONTAINER = "24.12"


class Detectron2Unavailable(RuntimeError):
    """detectron2 is not installed; the message says how to get it (INSTALL_HINT)."""


class UnsupportedModel(ValueError):
    """The config's model is one the contract cannot carry; the message says why."""


class TargetUnavailable(RuntimeError):
    """The export was asked to verify on a device this machine does not have."""


def import_detectron2():
    """Import detectron2 and return the module.

    Raises:
        Detectron2Unavailable: it is not installed.
    """
    try:
        import detectron2
    except ImportError as e:
        raise Detectron2Unavailable(f"{INSTALL_HINT} ({e})") from None
    return detectron2


def detectron2_version() -> str:
    """Return the installed detectron2's version (Detectron2Unavailable without it)."""
    return import_detectron2().__version__


# --------------------------------------------------------------------------- config
def zoo_config_dir() -> Path:
    """Find detectron2's model-zoo configs (detectron2/model_zoo/configs).

    Found without importing detectron2.model_zoo (it needs pkg_resources, gone from
    setuptools >= 81).

    Raises:
        Detectron2Unavailable: detectron2 is not installed.
    """
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise Detectron2Unavailable(INSTALL_HINT)
    return Path(list(spec.submodule_search_locations)[0]) / "model_zoo" / "configs"


def resolve_config(config: str) -> Path:
    """Find a config: a yaml file, or a model-zoo name such as
    COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml.

    Raises:
        FileNotFoundError: it is neither.
    """
    path = Path(config)
    if path.is_file():
        return path
    zoo = zoo_config_dir() / config
    if zoo.is_file():
        return zoo
    raise FileNotFoundError(f"config {config!r}: no such file, and no model-zoo config of that "
                            f"name under {zoo_config_dir()}")


def load_config(config: str, opts: Sequence[str] = ()):
    """Load a detectron2 CfgNode from a yaml path or zoo name plus overrides, on the CPU.

    MODEL.WEIGHTS is cleared: weights come from ``build``'s ``weights`` argument only, so
    nothing is fetched from the URLs the zoo configs name (ImageNet backbones).

    Args:
        config: a yaml file or a model-zoo name (resolve_config).
        opts: KEY VALUE pairs, flat, as detectron2's tools take them.

    Returns:
        The frozen CfgNode, MODEL.DEVICE "cpu".

    Raises:
        ValueError: ``opts`` is not pairs.
        UnsupportedModel: not a yaml config (LazyConfig .py files are not supported).
    """
    import_detectron2()
    from detectron2.config import get_cfg

    if len(opts) % 2:
        raise ValueError(f"--opts takes KEY VALUE pairs, got {len(opts)} items: {list(opts)}")
    path = resolve_config(config)
    if path.suffix not in (".yaml", ".yml"):
        raise UnsupportedModel(f"config {config!r}: only yaml configs are supported "
                               "(LazyConfig .py files are not)")
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def config_digest(cfg) -> str:
    """Hash the config as dumped (sha256 hex), MODEL.DEVICE and MODEL.WEIGHTS left out.

    The same digest means the same model and the same test-time settings.
    """
    c = cfg.clone()
    c.defrost()
    c.MODEL.DEVICE, c.MODEL.WEIGHTS = "", ""
    return hashlib.sha256(c.dump().encode()).hexdigest()


def file_digest(path: Path) -> str:
    """Hash a file's bytes (sha256 hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_supported(cfg) -> int | None:
    """Refuse what the contract cannot carry.

    Returns:
        The mask resolution M, or None without masks.

    Raises:
        UnsupportedModel: naming every problem found.
    """
    problems = []
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in META_ARCHITECTURES:
        problems.append(f"MODEL.META_ARCHITECTURE={arch!r} (supported: "
                        f"{', '.join(META_ARCHITECTURES)}: Mask R-CNN, Faster R-CNN, Cascade)")
    if cfg.MODEL.KEYPOINT_ON:
        problems.append("MODEL.KEYPOINT_ON=True (keypoints are not in the contract)")
    if cfg.INPUT.FORMAT not in CHANNEL_ORDERS:
        problems.append(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r} (the pipeline feeds "
                        f"{' or '.join(CHANNEL_ORDERS)}, as DefaultPredictor accepts)")
    min_size = cfg.INPUT.MIN_SIZE_TEST
    if not isinstance(min_size, int) or min_size <= 0:
        problems.append(f"INPUT.MIN_SIZE_TEST={min_size!r} (need a positive int; 0, "
                        "detectron2's 'no resize', is not supported by the pipeline)")
    if cfg.INPUT.MAX_SIZE_TEST < (min_size if isinstance(min_size, int) else 0):
        problems.append(f"INPUT.MAX_SIZE_TEST={cfg.INPUT.MAX_SIZE_TEST} < MIN_SIZE_TEST")
    resolution = None
    if cfg.MODEL.MASK_ON:
        if cfg.MODEL.ROI_MASK_HEAD.NAME not in MASK_HEADS:
            problems.append(f"MODEL.ROI_MASK_HEAD.NAME={cfg.MODEL.ROI_MASK_HEAD.NAME!r} "
                            f"(supported: {', '.join(MASK_HEADS)})")
        if cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":  # C4: box-pooled features, res5 halves
            resolution = 2 * ((cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION + 1) // 2)
        else:  # mask pooler, conv head, then the 2x deconv
            resolution = 2 * cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    if problems:
        raise UnsupportedModel("cannot export this detectron2 model: " + "; ".join(problems))
    return resolution


# --------------------------------------------------------------------------- model
def build(cfg, weights: str | Path | None = None, seed: int = 0) -> tuple[nn.Module, str]:
    """Build the config's detectron2 model in eval mode on the CPU, with its weights.

    Args:
        cfg: from load_config.
        weights: a local .pkl (model zoo) or .pth (a training run's checkpoint), loaded
            with detectron2's DetectionCheckpointer; a checkpoint that leaves model
            parameters unset is refused. None: detectron2's own initialisation, seeded
            with ``seed``: the pipeline works, the detections mean nothing.
        seed: seed of the random initialisation.

    Returns:
        (the model, a description of its weights).

    Raises:
        UnsupportedModel: check_supported refuses the config.
        FileNotFoundError: ``weights`` is not a local file (nothing is downloaded).
        ValueError: the checkpoint leaves model parameters unset.
    """
    check_supported(cfg)
    import_detectron2()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    if weights is None:
        return model, f"random initialisation (seed {seed}); detections are meaningless"
    text = str(weights)
    if "://" in text or not Path(text).is_file():
        raise FileNotFoundError(f"weights {text!r}: not a local file (download model-zoo weights "
                                "yourself; nothing is fetched here)")

    class Recording(DetectionCheckpointer):
        incompatible = None

        def _log_incompatible_keys(self, incompatible):
            self.incompatible = incompatible
            super()._log_incompatible_keys(incompatible)

    checkpointer = Recording(model)
    checkpointer.load(text)
    missing = list(checkpointer.incompatible.missing_keys) if checkpointer.incompatible else []
    if missing:
        raise ValueError(f"weights {Path(text).name}: {len(missing)} model parameters are not "
                         f"in the checkpoint (first: {missing[:5]}); is it a checkpoint of this "
                         "config's model?")
    return model.eval(), f"checkpoint {Path(text).name} (sha256 {file_digest(Path(text))[:12]})"


def class_names(cfg, names_file: Path | None = None) -> tuple[tuple[str, ...], tuple[int, ...], str]:
    """Name the config's classes and give their dataset category ids.

    From ``names_file`` (one per line), else from the first DATASETS.TEST dataset's
    metadata when detectron2 has it registered (COCO's 80 thing classes and their COCO
    ids), else class_<i>. Detectron2 class indices have no background class.

    Returns:
        (name per class index, dataset category id per class index, where they came
        from).

    Raises:
        ValueError: ``names_file`` does not hold MODEL.ROI_HEADS.NUM_CLASSES names.
    """
    num = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if names_file is not None:
        names = exporter.names_from_file(names_file, num, "MODEL.ROI_HEADS.NUM_CLASSES")
        return names, tuple(range(num)), f"file {Path(names_file).name}"
    import detectron2.data  # noqa: F401  registers the builtin datasets (no file is read)
    from detectron2.data import MetadataCatalog

    for dataset in cfg.DATASETS.TEST[:1]:
        meta = MetadataCatalog.get(dataset)
        names = meta.get("thing_classes", None)
        if names is not None and len(names) == num:
            to_contiguous = meta.get("thing_dataset_id_to_contiguous_id", None)
            ids = tuple(range(num))
            if to_contiguous:
                inverse = {v: k for k, v in to_contiguous.items()}
                ids = tuple(int(inverse[i]) for i in range(num))
            return tuple(names), ids, f"dataset {dataset}"
    return tuple(f"class_{i}" for i in range(num)), tuple(range(num)), "none registered"


def torch_rule(serving_torch: str | None) -> tuple[str, str, bool]:
    """Apply the torch version rule: the container's libtorch must be no older than the
    export's torch.

    Args:
        serving_torch: the serving libtorch's version; None: DEFAULT_CONTAINER's.

    Returns:
        (export torch, serving torch, whether the container loads the file).
    """
    def parse(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("+")[0].split(".")[:3] if p.isdigit())

    ours = torch.__version__.split("+")[0]
    theirs = serving_torch or CONTAINER_TORCH[DEFAULT_CONTAINER]
    return ours, theirs, parse(ours) <= parse(theirs)


def metadata(cfg, config: str, weights_desc: str, method: str, device: str,
             score_threshold: float | None = None, names_file: Path | None = None,
             weights: str | Path | None = None, extra: dict | None = None) -> ModelMetadata:
    """Read what the pipeline needs from the config into the export's metadata.

    Channel order (INPUT.FORMAT), resize (MIN_SIZE_TEST / MAX_SIZE_TEST), mask
    resolution, class names. The default request threshold is
    ROI_HEADS.SCORE_THRESH_TEST: the model already drops detections below it, so by
    default the pipeline answers what DefaultPredictor answers.

    Args:
        cfg: from load_config.
        config: the config as given (a file or a model-zoo name), recorded as the source.
        weights_desc: build's description of the weights.
        method: "trace" or "script".
        device: where the file will be served ("cpu" or "cuda").
        score_threshold: the pipeline's default; None: ROI_HEADS.SCORE_THRESH_TEST.
        names_file: class names, one per line (class_names).
        weights: the weights file, recorded by digest; None for random weights.
        extra: more entries for ``extra``.

    Raises:
        UnsupportedModel: check_supported refuses the config.
    """
    resolution = check_supported(cfg)
    names, ids, names_from = class_names(cfg, names_file)
    threshold = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST if score_threshold is None else score_threshold
    return ModelMetadata(
        source=f"detectron2:{config if not Path(config).is_file() else Path(config).name}",
        channel_order=cfg.INPUT.FORMAT, min_size=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size=int(cfg.INPUT.MAX_SIZE_TEST), mask_resolution=resolution,
        class_names=names, category_ids=ids, score_threshold=float(threshold),
        weights=weights_desc, torch_version=torch.__version__.split("+")[0], device=device,
        extra={"method": method, "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
               "config_sha256": config_digest(cfg),
               "weights_sha256": file_digest(Path(weights)) if weights else "",
               "detectron2": detectron2_version(), "class_names_from": names_from,
               "score_thresh_test": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
               "nms_thresh_test": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
               "detections": cfg.TEST.DETECTIONS_PER_IMAGE,
               "proposals": cfg.MODEL.RPN.POST_NMS_TOPK_TEST, **(extra or {})})


# --------------------------------------------------------------------------- modules
def _flatten(inst, has_masks: bool, image_size: Tensor) -> Tuple[Tensor, ...]:
    """Instances -> contract outputs: fields sorted by name, then image_size (what
    detectron2's flatten_to_tuple gives)."""
    if has_masks:
        return inst.pred_boxes.tensor, inst.pred_classes, inst.pred_masks, inst.scores, image_size
    return inst.pred_boxes.tensor, inst.pred_classes, inst.scores, image_size


class Eager(nn.Module):
    """Run detectron2's own ``inference(do_postprocess=False)``: the export's reference.

    It runs on what DefaultPredictor feeds its model (the resized image as float32
    [3, H, W]).
    """

    def __init__(self, model: nn.Module, has_masks: bool):
        super().__init__()
        self.model = model
        self.has_masks = has_masks

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        """Detect in one image.

        Args:
            image: uint8 [3, H, W], resized, channels as INPUT.FORMAT.

        Returns:
            boxes float32 [N, 4] (input pixels), classes int64 [N], (masks float32
            [N, 1, M, M] mask-head probabilities,) scores float32 [N], image_size int64 [2].
        """
        inst = self.model.inference([{"image": image.float()}], do_postprocess=False)[0]
        size = torch.tensor(list(inst.image_size), dtype=torch.int64, device=image.device)
        return _flatten(inst, self.has_masks, size)


@torch.jit.script_if_tracing
def _pad_to_divisible(x: Tensor, divisibility: int) -> Tuple[Tensor, Tensor]:
    """float [C, H, W] -> (float [1, C, H', W'] zero-padded at the bottom and right to
    multiples of ``divisibility``, int64 [2] (H, W) on x's device).

    ImageList.from_tensors computes the same padding from a stack of traced sizes, a
    CPU tensor that then meets the graph's constants (moved to the GPU at load time).
    Scripted inside the trace, the arithmetic is on ints and the size tensor is made
    where the image is, so the traced file runs on any device."""
    height, width = x.shape[-2], x.shape[-1]
    padded_h, padded_w = height, width
    if divisibility > 1:
        padded_h = (height + divisibility - 1) // divisibility * divisibility
        padded_w = (width + divisibility - 1) // divisibility * divisibility
    batch = torch.nn.functional.pad(x, [0, padded_w - width, 0, padded_h - height], value=0.0)
    size = torch.tensor([height, width], dtype=torch.int64, device=x.device)
    return batch.unsqueeze(0), size


def size_divisibility(model: nn.Module) -> int:
    """Return the padding GeneralizedRCNN.preprocess_image applies (the backbone's, or
    its padding_constraints').

    Raises:
        UnsupportedModel: the backbone pads to a square (ViTDet).
    """
    divisibility = int(model.backbone.size_divisibility)
    constraints = getattr(model.backbone, "padding_constraints", None) or {}
    if constraints.get("square_size", 0) > 0:
        raise UnsupportedModel("backbone pads to a square (padding_constraints square_size); "
                               "not supported by the traced export: use --method script")
    return int(constraints.get("size_divisibility", divisibility))


def traceable_inference(model: nn.Module, image: Tensor):
    """Run GeneralizedRCNN.inference(do_postprocess=False) on one image, traceably.

    preprocess_image's normalise-and-pad is done by ``_pad_to_divisible`` (same values,
    device-independent trace).

    Args:
        model: a GeneralizedRCNN.
        image: uint8 [3, H, W].

    Returns:
        Instances: pred_boxes, pred_classes, [pred_masks,] scores; image_size an int64
        [2] tensor on the image's device.
    """
    from detectron2.layers import move_device_like
    from detectron2.structures import ImageList

    x = move_device_like(image, model.pixel_mean).float()
    x = (x - model.pixel_mean) / model.pixel_std
    batch, size = _pad_to_divisible(x, size_divisibility(model))
    images = ImageList(batch, [size])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    results, _ = model.roi_heads(images, features, proposals, None)
    return results[0]


class _ScriptableMasks(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        inst = self.model.inference([{"image": image.float()}], do_postprocess=False)[0]
        height, width = inst.image_size
        size = torch.tensor([height, width], dtype=torch.int64, device=image.device)
        return inst.pred_boxes.tensor, inst.pred_classes, inst.pred_masks, inst.scores, size


class _ScriptableBoxes(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        inst = self.model.inference([{"image": image.float()}], do_postprocess=False)[0]
        height, width = inst.image_size
        size = torch.tensor([height, width], dtype=torch.int64, device=image.device)
        return inst.pred_boxes.tensor, inst.pred_classes, inst.scores, size


def trace(model: nn.Module, image: Tensor, has_masks: bool, log=print):
    """Trace detectron2's TracingAdapter around ``traceable_inference`` on the CPU.

    Args:
        model: a GeneralizedRCNN on the CPU.
        image: uint8 [3, H, W], the sample traced with.
        has_masks: whether the model has a mask head.
        log: prints what the trace found.

    Returns:
        The traced module.

    Raises:
        ExportMismatch: the traced graph mixes host and model-device tensors, or the
            output fields are not the contract's.
    """
    from detectron2.export import TracingAdapter

    adapter = TracingAdapter(model, (image,), traceable_inference)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
    frozen = sorted({str(w.message).splitlines()[0][:90] for w in caught
                     if issubclass(w.category, torch.jit.TracerWarning)})
    log(f"traced on the CPU; {len(frozen)} kinds of tracer warnings (Python-side branches and "
        "asserts fixed at trace time; the samples below check the trace on other shapes)")
    fields = list(getattr(adapter.outputs_schema, "keys", []))
    expected = ["pred_boxes", "pred_classes"] + (["pred_masks"] if has_masks else []) + ["scores"]
    if fields != expected:
        raise ExportMismatch(f"the model's outputs are Instances fields {fields}; the contract "
                             f"needs {expected}")
    problems = host_device_mixing(traced.inlined_graph)
    if problems:
        raise ExportMismatch("the traced graph would fail on a GPU (a CPU tensor meets tensors "
                             "that load onto the serving device):\n  " + "\n  ".join(problems))
    log("device check: no CPU-only tensor meets a tensor that loads onto the serving device "
        "(the traced file runs on CPU or GPU)")
    return traced


def script(model: nn.Module, has_masks: bool):
    """Script the model with detectron2's ``scripting_with_instances``, in contract order."""
    from detectron2.export import scripting_with_instances
    from detectron2.structures import Boxes

    fields = {name: (Boxes if name.endswith("boxes") else Tensor) for name in SCRIPT_FIELDS_NAMES}
    adapter = (_ScriptableMasks if has_masks else _ScriptableBoxes)(model).eval()
    return scripting_with_instances(adapter, fields)


def default_images() -> list[bytes]:
    """Generate two scenes, landscape and portrait, as JPEG bytes.

    A traced graph is checked on a shape it was not traced with.
    """
    return [samples.encode(samples.scene(480, 640, seed=0)),
            samples.encode(samples.scene(600, 400, seed=5))]


def check_devices(devices: Sequence[str]) -> None:
    """Check that each target device exists here: the export verifies the file on it.

    Raises:
        TargetUnavailable: a CUDA device is asked for and there is none.
    """
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TargetUnavailable(f"device {device!r}: no CUDA device on this machine, so the "
                                    "export cannot be verified there; export with --device cpu "
                                    "here, or run the export where a GPU is")


@dataclass(frozen=True)
class Verified:
    """Hold the check of the exported file on one sample on one device.

    Attributes:
        device: where the file ran.
        sample: the sample's index.
        shape: the sample's shape, (3, H, W).
        detections: how many the exported model found.
        ok: every output within verify.TOLERANCES of detectron2's.
    """

    device: str
    sample: int
    shape: tuple[int, ...]
    detections: int
    ok: bool


def export(model: nn.Module, meta: ModelMetadata, output: Path, method: str = "trace",
           images: Sequence[bytes] = (), devices: Sequence[str] = ("cpu",),
           log: Callable[[str], None] = print) -> list[Verified]:
    """Trace or script ``model`` (on the CPU), save it with ``meta``, and verify it.

    The file is loaded back on each of ``devices`` (as Triton does: ``map_location``)
    and compared with detectron2's own inference on the samples (prepared exactly as
    the pipeline prepares them: bls).

    Args:
        model: a GeneralizedRCNN on the CPU (build).
        meta: the metadata saved inside the file (metadata).
        output: where the file goes.
        method: "trace" or "script".
        images: encoded sample images; none: default_images.
        devices: where to verify it ("cpu", "cuda").
        log: prints the comparison.

    Returns:
        One Verified per device and sample.

    Raises:
        ValueError: ``method`` is neither.
        TargetUnavailable: a device is not on this machine.
        ExportMismatch: a difference beyond verify.TOLERANCES, or code that names a CUDA
            device; nothing is written.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    check_devices(devices)
    model = model.eval()
    inputs = exporter.sample_inputs(meta, list(images) or default_images())
    has_masks = meta.has_masks
    if method == "trace":
        exported = trace(model, inputs[0], has_masks, log)
    else:
        exported = script(model, has_masks)
    specs = meta.outputs
    output.parent.mkdir(parents=True, exist_ok=True)
    candidate = output.with_name(output.name + ".candidate")
    results: list[Verified] = []
    try:
        save(exported, meta, candidate)
        pinned = hardcoded_cuda(candidate)
        if pinned:
            raise ExportMismatch("the exported code names a CUDA device, which pins it to one "
                                 "GPU:\n  " + "\n  ".join(pinned))
        for device in devices:
            reference = Eager(model if device == "cpu" else copy.deepcopy(model).to(device),
                              has_masks).eval()
            # no .eval(): saved in eval mode, and scripted detectron2 modules refuse it
            reloaded = torch.jit.load(str(candidate), map_location=device)
            for i, image in enumerate(inputs):
                image = image.to(device)
                with torch.inference_mode():
                    expected = reference(image)
                    got = reloaded(image)
                check_outputs(tuple(t.cpu() for t in got), specs)
                diffs = compare(expected, got, specs)
                ok = all(d.ok for d in diffs)
                log(f"sample {i} {list(image.shape)} on {device}: {METHODS[method]} vs eager "
                    f"detectron2 ({len(got[0])} detections)")
                for d in diffs:
                    log(str(d))
                results.append(Verified(device, i, tuple(image.shape), len(got[0]), ok))
        if not all(r.ok for r in results):
            raise ExportMismatch(f"the {METHODS[method]} model disagrees with detectron2's own "
                                 "inference (see the differences above); nothing was written")
        candidate.replace(output)
    finally:
        candidate.unlink(missing_ok=True)
    return results


# --------------------------------------------------------------------------- test weights
# Output spread of the calibrated random checkpoint: hidden layers unit std; the heads
# wide enough that scores and mask probabilities are decisive, as a trained model's are.
HEAD_STD = {"roi_heads.box_predictor.cls_score": 3.0, "roi_heads.box_predictor.bbox_pred": 0.1,
            "roi_heads.mask_head.predictor": 4.0, "proposal_generator.rpn_head.objectness_logits": 2.0,
            "proposal_generator.rpn_head.anchor_deltas": 0.1}


def calibrated_random_weights(model: nn.Module, image: Tensor) -> dict[str, float]:
    """Rescale a randomly initialised detectron2 R-CNN in place (LSUV-style), to behave
    like a trained one numerically.

    Each conv/linear output gets unit std (heads: HEAD_STD) on ``image``.

    Why: detectron2's initialisation with frozen batch norm makes activations grow layer
    after layer (scores saturate at 0 and 1) and its heads start at std 0.01 / 0.001
    (every class scores ~1/K, every mask pixel ~0.5): a comparison of two
    implementations then hinges on ties. This is for tests and parity runs; the weights
    mean nothing.

    Args:
        model: the randomly initialised model.
        image: uint8 [3, H, W] as the pipeline prepares it.

    Returns:
        The scale applied, by module name.
    """
    from detectron2.layers import Conv2d as D2Conv

    scales: dict[str, float] = {}
    handles = []

    def hook(name):
        def rescale(module, inputs, output):
            if name not in scales:
                std = float(output.float().std())
                scales[name] = HEAD_STD.get(name, 1.0) / std if std > 0 else 1.0
            return output * scales[name]
        return rescale

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            Eager(model, has_masks=False)(image)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name not in scales:
                continue
            s = scales[name]
            norm = getattr(module, "norm", None) if isinstance(module, D2Conv) else None
            target = norm if norm is not None else module
            # (frozen) batch norm: y = x * weight' + bias' after the conv; scale both
            target.weight.mul_(s)
            if getattr(target, "bias", None) is not None:
                target.bias.mul_(s)
    return scales


def write_test_checkpoint(cfg, path: Path, seed: int = 0, image: bytes | None = None) -> Path:
    """Write a calibrated random checkpoint of the config's model; not a trained model.

    DetectionCheckpointer format ({"model": state_dict}): a seeded random
    initialisation, calibrated by calibrated_random_weights on ``image``.

    Args:
        cfg: from load_config.
        path: the .pth file to write.
        seed: seed of the random initialisation.
        image: encoded image bytes; None: a generated scene.

    Returns:
        ``path``.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # the mask head runs on every detection
    cfg.freeze()
    model, _ = build(cfg, None, seed)
    meta_for_resize = ModelMetadata(
        source="calibration", channel_order=cfg.INPUT.FORMAT, min_size=cfg.INPUT.MIN_SIZE_TEST,
        max_size=cfg.INPUT.MAX_SIZE_TEST, mask_resolution=None, class_names=(), category_ids=())
    sample = exporter.sample_inputs(meta_for_resize, [image] if image else [])[0]
    calibrated_random_weights(model, sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "__note__": f"calibrated random weights, seed {seed}"},
               path)
    return path
