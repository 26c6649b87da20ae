"""The two resizes: ``pil`` (detectron2's own, the default, exact) and ``torch`` (opt-in,
faster, within 1 of PIL on a few pixels), in process, through the double and served."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from bls.contract.parameters import (PIPELINE_PARAMETERS, PREPROCESS_PARAMETERS, RESIZE_PIL,
                                     RESIZE_TORCH)
from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, PIPELINE_INPUT,
                                  PIPELINE_NAME, PREPROCESS_NAME)
from bls.pipeline.steps import Pipeline, prepare
from bls.pipeline.image import (decode_image, resize_image, resize_torch, resized_shape,
                                to_model_input)
from bls.testing import TritonDouble, model_config_dict
from export import samples

SIZES = [(480, 640), (1080, 1920), (517, 333), (77, 1999)]


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """resize=torch sets torch's threads to 1 for its process (a model's own process when
    served); here that process is pytest's, whose in-process reference model must keep
    the thread count the served runner uses, or its floats drift from the server's."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pil_reference(data: bytes, meta) -> np.ndarray:
    """What detectron2 feeds its model, written out with PIL: decoded in the model's order,
    PIL bilinear to ResizeShortestEdge's size, HWC -> CHW."""
    image = decode_image(data, meta.channel_order)
    h, w = resized_shape(*image.shape[:2], meta.min_size, meta.max_size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
@pytest.mark.parametrize("size", SIZES)
def test_default_prepare_is_exactly_pil(exported, size, channel_order):
    meta = dataclasses.replace(exported.meta, channel_order=channel_order, min_size=800,
                               max_size=1333)
    for ext in (".jpg", ".png"):
        data = samples.encode(samples.scene(*size, seed=size[0]), ext)
        got = prepare(data, meta).model_input
        assert got.flags.c_contiguous and got.dtype == np.uint8
        np.testing.assert_array_equal(got, pil_reference(data, meta))


@pytest.mark.parametrize("size", SIZES)
def test_torch_resize_is_within_one_of_pil_on_few_pixels(size):
    image = samples.scene(*size, seed=7)
    h, w = resized_shape(*size, 800, 1333)
    expected = to_model_input(resize_image(image, h, w))
    for reverse in (False, True):
        got = resize_torch(image, h, w, reverse)
        assert got.shape == (3, h, w) and got.flags.c_contiguous and got.dtype == np.uint8
        want = expected[::-1] if reverse else expected
        diff = np.abs(got.astype(np.int16) - want)
        assert diff.max() <= 1
        assert (diff > 0).mean() < 0.01, (diff > 0).mean()
    same = samples.scene(40, 60, seed=1)
    np.testing.assert_array_equal(resize_torch(same, 40, 60), to_model_input(same))


def test_resize_is_a_strict_config_parameter():
    for parameters in (PIPELINE_PARAMETERS, PREPROCESS_PARAMETERS):
        assert parameters.read({})["resize"] == RESIZE_PIL
        config = {"parameters": {"resize": {"string_value": "torch"}}}
        assert parameters.read_config(config)["resize"] == RESIZE_TORCH
        with pytest.raises(ValueError, match=r"config parameter 'resize': must be one of "
                                             r"\['pil', 'torch'\], got 'cv2'"):
            parameters.read_config({"parameters": {"resize": {"string_value": "cv2"}}})
    with pytest.raises(ValueError, match="resize must be"):
        prepare(samples.encode(samples.scene(20, 30), ".png"), None, resize="cv2")


def _differing_image(meta) -> bytes:
    """An image whose model input differs between the two resizes (so a test can tell
    which one ran)."""
    for seed in range(20):
        data = samples.encode(samples.scene(300, 420, seed=seed), ".jpg")
        if not np.array_equal(prepare(data, meta).model_input,
                              prepare(data, meta, resize=RESIZE_TORCH).model_input):
            return data
    raise AssertionError("no generated image where the resizes differ")


def test_pipeline_bls_resizes_with_torch_when_configured(exported, torchscript):
    data = _differing_image(exported.meta)
    seen = []

    def model(inputs, _):
        seen.append(inputs[MODEL_INPUT.name])
        return torchscript(inputs[MODEL_INPUT.name])

    double = TritonDouble({MODEL_NAME: model})
    config = model_config_dict(exported.repository / PIPELINE_NAME / "config.pbtxt")
    for resize in (RESIZE_TORCH, RESIZE_PIL):
        config["parameters"]["resize"] = {"string_value": resize}
        with double.installed():
            loaded = double.load_model(exported.repository / PIPELINE_NAME, config)
            request = double.request({PIPELINE_INPUT.name: np.array([[data]], dtype=object)})
            [response] = double.execute(loaded, [request])
            loaded.finalize()
        assert not response.has_error(), response.error().message()
        np.testing.assert_array_equal(
            seen.pop(), prepare(data, exported.meta, resize=resize).model_input)


@pytest.mark.server
@pytest.mark.ci  # a served smoke run of the opt-in resize: CI only
def test_served_resize_torch_in_pipeline_bls_and_the_ensemble(exported, torchscript, tmp_path):
    from export.repository import assemble
    from server.launcher import TritonServer

    setting = 'parameters { key: "resize" value { string_value: "torch" } }'
    repository = assemble(exported.model_file, tmp_path / "repository",
                          {PIPELINE_NAME: setting, PREPROCESS_NAME: setting})
    data = _differing_image(exported.meta)
    expected = Pipeline(exported.meta, torchscript, resize=RESIZE_TORCH)(data)
    with TritonServer(repository) as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as client:
        for model, shape in ((PIPELINE_NAME, [1, 1]), (ENSEMBLE_NAME, [1])):
            tensor = grpcclient.InferInput(PIPELINE_INPUT.name, shape, "BYTES")
            tensor.set_data_from_numpy(np.array([data], dtype=object).reshape(shape))
            result = client.infer(model, [tensor])
            for name in ("boxes", "scores", "classes", "masks_rle"):
                got = result.as_numpy(name)
                got = got[0] if len(shape) == 2 else got
                if got.dtype == object:
                    assert list(got) == list(expected[name]), (model, name)
                else:
                    np.testing.assert_allclose(got, expected[name], rtol=0, atol=1e-4,
                                               err_msg=f"{model} {name}")


def test_prepare_benchmark_smoke_run(capsys, tmp_path):
    from benchmarks.prepare import main

    assert main(["--generated", "300x200", "--generated", "1800x1700", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("prepare pil (default, exact)") == 2
    exact = [line for line in out.splitlines() if "prepare pil (default, exact)" in line]
    assert all(line.endswith("max 0, 0.000% differ") for line in exact)  # against itself
    torch_rows = [line for line in out.splitlines() if "prepare torch (opt-in)" in line]
    assert len(torch_rows) == 2 and all("differ" in line for line in torch_rows)
    assert "reduced JPEG 1/2 + pil" in out  # 1800x1700 -> 847x800 shrinks by 2.1


@pytest.mark.parametrize("size", SIZES)
def test_pil_resizes_with_22_bit_fixed_point_weights(size):
    """Why resize=torch (and Pillow-SIMD) differ from PIL by 1 on a few values: PIL's
    bilinear is separable, horizontal pass first, with its filter's weights in 22-bit
    fixed point and int32 sums; they round the weights to 16 bits. A numpy transcription
    of PIL's C loop equals PIL to the bit (docs/benchmarks.md, "the resize")."""
    bits = 22

    def one_pass(image: np.ndarray, out_size: int) -> np.ndarray:  # along the last axis
        in_size, scale = image.shape[-1], image.shape[-1] / out_size
        support = max(scale, 1.0)
        centers = (np.arange(out_size) + 0.5) * scale
        xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
        xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - xmin
        x = np.arange(int(np.ceil(support)) * 2 + 1)[None, :]
        w = np.clip(1 - np.abs((x + xmin[:, None] - centers[:, None] + 0.5) / support), 0, None)
        w[x >= xmax[:, None]] = 0.0
        k = (0.5 + w / w.sum(axis=1, keepdims=True) * (1 << bits)).astype(np.int32)
        acc = np.full(image.shape[:-1] + (out_size,), 1 << (bits - 1), np.int32)
        for j in range(k.shape[1]):  # int32 holds 255 x 2**22 + the rounding bias
            acc += image[..., np.minimum(xmin + j, in_size - 1)].astype(np.int32) * k[:, j]
        return np.clip(acc >> bits, 0, 255).astype(np.uint8)

    image = samples.scene(*size, seed=3)
    h, w = resized_shape(*size, 800, 1333)
    horizontal = np.moveaxis(one_pass(np.moveaxis(image, 1, -1), w), -1, 1)
    both = np.moveaxis(one_pass(np.moveaxis(horizontal, 0, -1), h), -1, 0)
    np.testing.assert_array_equal(both, resize_image(image, h, w))
