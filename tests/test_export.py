"""The torchvision export: contract, parity with torchvision's own model, checkpoints,
refusal to write a mismatching model. The session's exported model comes from
conftest.exported (the real `python -m export` entry point)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from bls.contract.tensors import MODEL_INPUT, model_output, model_outputs
from bls.pipeline.steps import prepare
from export import exporter, samples
from export import torchvision_maskrcnn as tvm
from export.torchscript import read_metadata
from export.verify import ExportMismatch
from tests.conftest import TEST_EXPORT_ARGS

SMALL = dict(box_score_thresh=0.05, detections_per_img=20, proposals=100)


def test_export_records_what_the_pipeline_needs(exported):
    meta = exported.meta
    assert meta.channel_order == "RGB" and (meta.min_size, meta.max_size) == (256, 384)
    assert meta.mask_resolution == 28
    assert len(meta.class_names) == 91 and meta.class_names[1] == "person"
    assert meta.category_ids == tuple(range(91))
    assert meta.score_threshold == 0.5
    assert "random initialisation (seed 0)" in meta.weights
    assert meta.torch_version == torch.__version__.split("+")[0]


def test_exported_file_follows_the_contract(exported, torchscript, images):
    model_input = prepare(images["scene.jpg"], exported.meta).model_input
    assert model_input.dtype == MODEL_INPUT.numpy_dtype and model_input.shape[0] == 3
    outputs = torchscript(model_input)
    specs = model_outputs(exported.meta.mask_resolution)
    assert list(outputs) == [s.name for s in specs]
    scores, image_size, masks = (model_output(specs, field).name
                                 for field in ("scores", "image_size", "masks"))
    n = len(outputs[scores])
    assert 0 < n <= 20
    for spec in specs:
        value = outputs[spec.name]
        assert value.dtype == spec.numpy_dtype, spec.name
        assert [d if d != -1 else value.shape[i] for i, d in enumerate(spec.dims)] == list(value.shape)
    assert outputs[image_size].tolist() == list(model_input.shape[1:])
    assert (np.diff(outputs[scores]) <= 0).all()
    masks = outputs[masks]
    assert masks.min() >= 0 and masks.max() <= 1  # probabilities, not pasted


def test_wrapper_equals_torchvision_forward_on_a_presized_image():
    """Independent reference: torchvision's own MaskRCNN.forward. With its resize set to
    keep the image as it is, its boxes, labels and scores must be ours; its masks are
    pasted, so the mask check compares our probabilities pasted back the same way."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    model, _ = tvm.build(seed=1, **SMALL)
    wrapper = tvm.TorchvisionMaskRCNN(model).eval()
    image = torch.from_numpy(samples.scene(256, 320, seed=4)[:, :, ::-1].transpose(2, 0, 1).copy())
    model.transform.min_size, model.transform.max_size = (256,), 320
    with torch.inference_mode():
        boxes, classes, masks, scores, size = wrapper(image)
        expected = model([image.float() / 255])[0]
    assert len(scores) > 0
    torch.testing.assert_close(boxes, expected["boxes"], rtol=0, atol=1e-3)
    assert torch.equal(classes, expected["labels"])
    torch.testing.assert_close(scores, expected["scores"], rtol=0, atol=1e-5)
    pasted = paste_masks_in_image(masks, boxes, (256, 320))
    torch.testing.assert_close(pasted, expected["masks"], rtol=0, atol=1e-5)
    assert size.tolist() == [256, 320]


def test_checkpoint_is_loaded_and_classes_follow_it(tmp_path):
    torch.manual_seed(7)
    source, _ = tvm.build(seed=7, **SMALL)
    # a 5-class model, as after fine-tuning: the export must take its class count
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    source.roi_heads.box_predictor = FastRCNNPredictor(1024, 5)
    source.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, 5)
    path = tmp_path / "finetuned.pth"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    loaded, desc = tvm.build(path, seed=123, **SMALL)  # the seed must not matter
    assert desc == "checkpoint finetuned.pth"
    assert loaded.roi_heads.box_predictor.cls_score.out_features == 5
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert tvm.class_names(5) == ("class_0", "class_1", "class_2", "class_3", "class_4")
    names = tmp_path / "names.txt"
    names.write_text("bg\ncat\ndog\n")
    with pytest.raises(ValueError, match="3 names; the model has 5 classes"):
        tvm.class_names(5, names)


def test_not_a_maskrcnn_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="not a torchvision Mask R-CNN state dict"):
        tvm.build(path)


class _DivergesWhenScripted(torch.nn.Module):
    """Behaves differently once scripted: the export must notice and refuse."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor):
        boxes, classes, masks, scores, size = self.inner(image)
        if torch.jit.is_scripting():
            boxes = boxes + 0.5
        return boxes, classes, masks, scores, size


def test_mismatching_export_is_refused_and_nothing_written(exported, tmp_path):
    model, _ = tvm.build(seed=0, **SMALL)
    out = tmp_path / "model.pt"
    lines = []
    with pytest.raises(ExportMismatch, match="nothing was written"):
        exporter.export_module(_DivergesWhenScripted(tvm.TorchvisionMaskRCNN(model)), exported.meta, out, log=lines.append)
    assert not out.exists()
    report = "\n".join(lines)
    boxes = model_output(exported.meta.outputs, "boxes").name
    assert boxes in report and "max |diff| 0.5" in report and "MISMATCH" in report


@pytest.mark.ci  # a slow smoke run of the CLI (its logic: the tests above): CI only
def test_export_cli_on_a_fresh_process_says_which_weights(tmp_path):
    """The real command line, in its own interpreter, with sockets to anything but
    loopback refused: nothing may be downloaded."""
    guard = (
        "import socket, runpy, sys\n"
        "orig = socket.socket.connect\n"
        "def connect(s, a):\n"
        "    if s.family in (socket.AF_INET, socket.AF_INET6) and a[0] not in ('127.0.0.1', '::1', 'localhost'):\n"
        "        raise SystemExit(f'network access attempted: {a}')\n"
        "    return orig(s, a)\n"
        "socket.socket.connect = connect\n"
        "sys.argv = ['export'] + sys.argv[1:]\n"
        "runpy.run_module('export', run_name='__main__')\n")
    repo = tmp_path / "repo"
    result = subprocess.run(
        [sys.executable, "-c", guard, "torchvision", "--repository", str(repo), *TEST_EXPORT_ARGS,
         "--seed", "3", "--score-threshold", "0.25"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights: random initialisation (seed 3); detections are meaningless" in result.stdout
    assert "scripted vs eager" in result.stdout and "MISMATCH" not in result.stdout
    meta = read_metadata(repo / "mask_rcnn" / "1" / "model.pt")
    assert meta.score_threshold == 0.25 and "seed 3" in meta.weights
