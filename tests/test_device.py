"""The device path (bls/pipeline/device.py): decode, resize, paste and RLE with torch, run on the
CPU here (the same code as on a GPU); the CUDA-only checks skip without a GPU.

References: the numpy path (bls/pipeline/image.py, bls/pipeline/masks.py), pycocotools, and for
pipeline_bls the TorchScript model fed the device path's own model input."""

import shutil

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from pycocotools import mask as mask_utils

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, PIPELINE_INPUT,
                                  PIPELINE_NAME, POSTPROCESS_NAME, PREPROCESS_NAME)
from bls.errors import InvalidInput
from bls.pipeline import device as device_ops
from bls.pipeline.steps import finish
from bls.pipeline import image as image_ops
from bls.backend.adapter import ModelInstance
from bls.contract.tensors import MaskFormat
from bls.pipeline.answer import build_answer
from bls.pipeline.instances import Instances
from bls.testing import TritonDouble, model_config_dict
from export import samples
from tests.test_masks import decode_polygons, pasted_dense, random_case, tie_case

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


class Meta:  # what prepare reads of ModelMetadata
    def __init__(self, order="RGB", min_size=256, max_size=384):
        self.channel_order, self.min_size, self.max_size = order, min_size, max_size


def decoded(masks_rle, height, width):
    rles = [{"size": [height, width], "counts": c} for c in masks_rle]
    return mask_utils.decode(rles).transpose(2, 0, 1) if rles else np.zeros((0, height, width))


@pytest.mark.parametrize("seed,height,width", [(0, 90, 130), (5, 200, 64)])
def test_paste_and_rle_match_the_numpy_path(seed, height, width):
    rng = np.random.default_rng(seed)
    masks, boxes = random_case(rng, 30, height, width)
    pasted = device_ops.paste(torch.from_numpy(masks), boxes, height, width)
    expected = pasted_dense(masks, boxes, height, width)
    got = pasted.to(torch.uint8).numpy()
    assert (got != expected).sum(axis=(1, 2)).max() <= 2  # float ties at 0.5 only
    # The RLE is exactly pycocotools' encoding of the pasted masks.
    reference = mask_utils.encode(np.asfortranarray(got.transpose(1, 2, 0)))
    assert device_ops.encode_rle(pasted) == [r["counts"] for r in reference]
    assert device_ops.encode_rle(pasted[:0]) == []


def test_prepare_matches_the_numpy_path_within_one_level():
    meta = Meta("BGR")
    for data in (samples.encode(samples.scene(240, 320, seed=1), ".jpg"),
                 samples.encode(samples.scene(330, 210, seed=2), ".png")):
        got, size = device_ops.prepare(data, meta, image_ops.DecodeLimits(), CPU)
        from bls.pipeline.steps import prepare

        expected = prepare(data, meta)
        assert size == expected.original_size and got.dtype == torch.uint8
        assert tuple(got.shape) == expected.model_input.shape
        assert np.abs(got.numpy().astype(int) - expected.model_input.astype(int)).max() <= 1


@pytest.mark.parametrize("data,problem", [(b"", "is empty"), (b"\xff\xd8\xff garbage", "cannot be decoded"),
                                         (b"no image", "cannot be decoded")])
def test_prepare_refuses_what_the_numpy_path_refuses(data, problem):
    with pytest.raises(InvalidInput, match=problem):
        device_ops.prepare(data, Meta(), image_ops.DecodeLimits(), CPU)


def test_parse_device():
    assert device_ops.parse_device("") is None and device_ops.parse_device("cpu") == CPU
    with pytest.raises(ValueError, match="must be cpu, cuda or cuda:N"):
        device_ops.parse_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            device_ops.parse_device("cuda")


@pytest.mark.parametrize("mask_format", [MaskFormat.DENSE, MaskFormat.BOX, MaskFormat.POLYGON])
def test_device_formats_are_the_one_pasted_mask(mask_format):
    """On the device too, every format is read from the one paste: dense, box crops and
    polygons decode to the RLE's pixels, threshold ties included."""
    height, width = 64, 80
    masks, boxes = tie_case(4, height=height, width=width)
    instances = Instances(boxes, np.linspace(0.99, 0.5, len(boxes)).astype(np.float32),
                          np.ones(len(boxes), np.int64), torch.from_numpy(masks))
    ops, meta = device_ops.DeviceOps(CPU), samples_meta()
    rle = decoded(build_answer(instances, (height, width), meta, MaskFormat.RLE, ops=ops)
                  ["masks_rle"], height, width).astype(bool)
    answer = build_answer(instances, (height, width), meta, mask_format, ops=ops)
    if mask_format is MaskFormat.DENSE:
        got = answer["masks"].astype(bool)
    elif mask_format is MaskFormat.BOX:
        got, offset = np.zeros_like(rle), 0
        for i, (x0, y0, w, h) in enumerate(answer["mask_windows"].tolist()):
            got[i, y0:y0 + h, x0:x0 + w] = answer["masks_box"][offset:offset + w * h].reshape(h, w)
            offset += w * h
    else:
        got = np.stack([decode_polygons(__import__("json").loads(text), height, width)
                        for text in answer["masks_polygon"]])
    np.testing.assert_array_equal(got, rle)


def samples_meta():
    from export.standin import metadata

    return metadata(28)


class Recorder:
    """pb_utils.Tensor.from_dlpack as the stub's, recording what it was handed."""

    def __init__(self, pb_utils):
        self.pb, self.given = pb_utils, []

    def from_dlpack(self, name, value):
        self.given.append(value)
        return self.pb.Tensor.from_dlpack(name, value)


def test_model_tensors_cross_by_dlpack_as_tensors_not_capsules():
    """python_backend orders the producer's CUDA stream before it reads a tensor handed
    with __dlpack__, and takes a bare capsule as it is (pb_tensor.cc FromDLPack): so
    pipeline_bls hands the tensor, both to mask_rcnn and back from its outputs."""
    double = TritonDouble()
    ops = device_ops.DeviceOps(CPU)
    image = torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(3, 4, 5)
    recorder = Recorder(double.module)
    tensor = ops.model_tensor(type("pb", (), {"Tensor": recorder})(), MODEL_INPUT.name, image)
    [given] = recorder.given
    assert isinstance(given, torch.Tensor) and hasattr(given, "__dlpack__")
    np.testing.assert_array_equal(tensor.as_numpy(), image.numpy())
    back = ops.from_model(tensor)  # the output's own __dlpack__, as the stub's Tensor has
    assert isinstance(back, torch.Tensor) and torch.equal(back, image)
    with pytest.raises(Exception, match="must be a DLPack capsule or have `__dlpack__`"):
        double.module.Tensor.from_dlpack("x", [1, 2, 3])


def test_cuda_means_the_gpu_triton_assigned_to_the_instance(monkeypatch):
    """device=cuda is model_instance_device_id's GPU; cuda:N is N whatever Triton assigned."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert device_ops.parse_device("cuda", ModelInstance("pipeline_bls_0_2", "GPU", 2)) == \
        torch.device("cuda", 2)
    assert device_ops.parse_device("cuda:1", ModelInstance("x", "GPU", 3)) == torch.device("cuda", 1)
    assert device_ops.parse_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"cuda:5 is not visible \(4 CUDA devices\)"):
        device_ops.parse_device("cuda", ModelInstance("x", "GPU", 5))


def test_the_adapter_hands_the_instance_to_the_handler():
    from bls.backend.adapter import python_model

    seen = []

    class Handler:
        def __init__(self, pb_utils, config, instance):
            seen.append(instance)

        def execute(self, requests):
            return []

        def finalize(self):
            pass

    model = python_model(None, Handler)()
    model.initialize({"model_config": "{}", "model_instance_kind": "GPU",
                      "model_instance_device_id": "3", "model_instance_name": "m_0_3"})
    assert seen == [ModelInstance("m_0_3", "GPU", 3)]


def test_pipeline_bls_works_on_its_instance_gpu(monkeypatch, exported):
    """The orchestrator resolves device=cuda with the instance Triton hands to initialize."""
    import bls.pipeline.device as device_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(device_module, "use_device", lambda device: None)
    double = TritonDouble()
    config = model_config_dict(exported.repository / PIPELINE_NAME / "config.pbtxt")
    config["parameters"]["device"] = {"string_value": "cuda"}
    with double.installed():
        model = double.load_model(exported.repository / PIPELINE_NAME, config,
                                  instance_kind="GPU", device_id=1)
        assert model.handler.ops.device == torch.device("cuda", 1)
        assert double.module.TRITONSERVER_MEMORY_GPU == \
            model.handler.ops.preferred_memory(double.module).preferred_memory_type
        assert model.handler.ops.preferred_memory(double.module).preferred_device_id == 1
        model.finalize()


def expected_answer(torchscript, meta, data, options):
    """The model fed the device path's own input, then the numpy postprocess."""
    model_input, size = device_ops.prepare(data, meta, image_ops.DecodeLimits(), CPU)
    return finish(torchscript(model_input.numpy()), size, meta, options)


def assert_close(got: dict, want: dict):
    assert got["classes"].tolist() == want["classes"].tolist()
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3, rtol=0)
    h, w = want["image_size"].tolist()
    a, b = decoded(got["masks_rle"], h, w), decoded(want["masks_rle"], h, w)
    inter = np.logical_and(a, b).sum(axis=(1, 2))
    union = np.logical_or(a, b).sum(axis=(1, 2))
    assert (inter[union > 0] / union[union > 0]).min(initial=1.0) >= 0.99


def test_pipeline_bls_on_the_cpu_device_through_the_double(torchscript, exported, images):
    double = TritonDouble({MODEL_NAME: lambda inputs, _: torchscript(inputs[MODEL_INPUT.name])})
    config = model_config_dict(exported.repository / PIPELINE_NAME / "config.pbtxt")
    config["parameters"]["device"] = {"string_value": "cpu"}
    with double.installed():
        model = double.load_model(exported.repository / PIPELINE_NAME, config)
        for name in ("scene.jpg", "gray.png"):
            request = double.request({PIPELINE_INPUT.name: np.array([[images[name]]], dtype=object)},
                                     {"score_threshold": 0.0})
            [response] = double.execute(model, [request])
            assert not response.has_error(), response.error().message()
            got = {t.name(): t.as_numpy()[0] for t in response.output_tensors()}
            assert len(got["scores"]) > 0
            assert_close(got, expected_answer(torchscript, exported.meta, images[name],
                                              RequestOptions(0.0)))
        model.finalize()


@pytest.mark.server
@pytest.mark.ci  # a served smoke run (also gpu_check --allow-cpu's): CI only
def test_pipeline_bls_on_the_cpu_device_served(exported, torchscript, images, tmp_path):
    from export.repository import assemble
    from server.launcher import TritonServer

    repository = assemble(exported.model_file, tmp_path / "repository", {
        PIPELINE_NAME: 'parameters { key: "device" value { string_value: "cpu" } }'})
    for unused in (ENSEMBLE_NAME, PREPROCESS_NAME, POSTPROCESS_NAME):  # a faster start
        shutil.rmtree(repository / unused)
    with TritonServer(repository) as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as client:
        for name in ("scene.jpg", "tall.png"):
            tensor = grpcclient.InferInput(PIPELINE_INPUT.name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[images[name]]], dtype=object))
            result = client.infer(PIPELINE_NAME, [tensor], parameters={"score_threshold": 0.0})
            got = {k: result.as_numpy(k)[0] for k in ("boxes", "scores", "classes", "masks_rle",
                                                      "image_size")}
            assert len(got["scores"]) > 0
            assert_close(got, expected_answer(torchscript, exported.meta, images[name],
                                              RequestOptions(0.0)))
        config = client.get_model_config(PIPELINE_NAME, as_json=True)["config"]
        assert config["parameters"]["device"]["string_value"] == "cpu"  # the override served


@CUDA
def test_cuda_prepare_and_paste_match_the_cpu():
    cuda = torch.device("cuda")
    data = samples.encode(samples.scene(480, 640, seed=3), ".jpg")
    on_gpu, size = device_ops.prepare(data, Meta(), image_ops.DecodeLimits(), cuda)
    on_cpu, _ = device_ops.prepare(data, Meta(), image_ops.DecodeLimits(), CPU)
    assert on_gpu.is_cuda and size == (480, 640)
    # nvJPEG and libjpeg-turbo may round a few values differently.
    assert (on_gpu.cpu().int() - on_cpu.int()).abs().max() <= 2
    masks, boxes = random_case(np.random.default_rng(1), 40, 480, 640)
    gpu = device_ops.paste(torch.from_numpy(masks).to(cuda), boxes, 480, 640)
    cpu = device_ops.paste(torch.from_numpy(masks), boxes, 480, 640)
    assert (gpu.cpu() != cpu).sum(dim=(1, 2)).max() <= 2
    assert device_ops.encode_rle(gpu) == device_ops.encode_rle(gpu.cpu())
