"""The device path (bls/pipeline/device.py): decode, resize, paste and RLE with torch, run on the
CPU here (the same code as on a GPU); the CUDA-only checks skip without a GPU.

References: the numpy path (bls/pipeline/image.py, bls/pipeline/masks.py), pycocotools, and for
pipeline_bls the TorchScript model fed the device path's own model input."""


import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from pycocotools import mask as mask_utils

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MODEL_INPUT, MODEL_NAME, PIPELINE_INPUT, PIPELINE_NAME
from bls.errors import InvalidInput
from bls.pipeline import device as device_ops
from bls.pipeline.steps import finish
from bls.pipeline import image as image_ops
from bls.pipeline.masks import dense_masks, paste_windows
from bls.testing import TritonDouble, model_config_dict
from export import samples
from tests.test_masks import random_case

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
    expected = dense_masks(paste_windows(masks, boxes, height, width), height, width)
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
def test_pipeline_bls_on_the_cpu_device_served(exported, torchscript, images, tmp_path):
    from export.repository import assemble
    from server.launcher import TritonServer

    repository = assemble(exported.model_file, tmp_path / "repository", {
        PIPELINE_NAME: 'parameters { key: "device" value { string_value: "cpu" } }'})
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
