"""The ensemble's steps and mask_rcnn's runner, driven through the bls.testing double
(pipeline_bls: test_pipeline_unit.py). Logic only: the same paths run against the real
server in test_server.py."""

import numpy as np
import pytest

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import (MODEL_INPUT, MODEL_NAME, ORIGINAL_SIZE, PIPELINE_INPUT,
                                  PIPELINE_OUTPUTS)
from bls.testing import TritonDouble, model_config_dict


def as_bytes_tensor(data: bytes, batched: bool) -> np.ndarray:
    return np.array([data], dtype=object).reshape((1, 1) if batched else (1,))


@pytest.fixture
def double(torchscript):
    def mask_rcnn(inputs, _params):
        return torchscript(inputs[MODEL_INPUT.name])

    with TritonDouble({MODEL_NAME: mask_rcnn}).installed() as d:
        yield d


def outputs_of(response, batched):
    assert not response.has_error(), response.error().message()
    values = {t.name(): t.as_numpy() for t in response.output_tensors()}
    assert list(values) == [s.name for s in PIPELINE_OUTPUTS]
    return {k: v[0] for k, v in values.items()} if batched else values


def assert_same_answer(got, expected):
    assert got["classes"].tolist() == expected["classes"].tolist()
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    assert got["masks_rle"].tolist() == expected["masks_rle"].tolist()
    np.testing.assert_array_equal(got["masks"], expected["masks"])
    assert got["image_size"].tolist() == expected["image_size"].tolist()


def test_ensemble_steps_compose_to_the_same_answer(double, exported, reference, images):
    pre = double.load_model(exported.repository / "preprocess")
    post = double.load_model(exported.repository / "postprocess")
    [prepared] = double.execute(pre, [double.request(
        {PIPELINE_INPUT.name: as_bytes_tensor(images["scene.jpg"], False)})])
    tensors = {t.name(): t.as_numpy() for t in prepared.output_tensors()}
    assert set(tensors) == {MODEL_INPUT.name, ORIGINAL_SIZE.name}
    model_outputs = double.models[MODEL_NAME](tensors, {})
    [answer] = double.execute(post, [double.request(
        {**model_outputs, ORIGINAL_SIZE.name: tensors[ORIGINAL_SIZE.name]}, {"max_detections": 3})])
    assert_same_answer(outputs_of(answer, batched=False),
                       reference(images["scene.jpg"], RequestOptions(0.5, 3)))
    [bad] = double.execute(pre, [double.request({PIPELINE_INPUT.name: as_bytes_tensor(b"", False)})])
    assert bad.error().message() == "preprocess: input 'image': is empty (0 bytes); expected an encoded image"


def test_mask_rcnn_runner_equals_the_torchscript_module(double, exported, torchscript, images):
    from bls.pipeline.steps import prepare

    model_dir = exported.repository / MODEL_NAME
    runner = double.load_model(model_dir, model_config_dict(model_dir / "configs" / "embedded.pbtxt"))
    model_input = prepare(images["tall.png"], exported.meta).model_input
    good = double.request({MODEL_INPUT.name: model_input})
    bad = double.request({MODEL_INPUT.name: np.zeros((4, 10, 10), np.uint8)})  # 4 channels
    served, failed = double.execute(runner, [good, bad])
    expected = torchscript(model_input)
    got = {t.name(): t.as_numpy() for t in served.output_tensors()}
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    assert failed.has_error() and failed.error().message().startswith("mask_rcnn: RuntimeError")


def test_mask_rcnn_runner_crosses_by_dlpack_with_tensors_not_capsules(double, exported, images,
                                                                       monkeypatch):
    """The input is read through the request tensor's own __dlpack__ and the outputs are
    handed as torch tensors: python_backend orders the CUDA streams for those, not for a
    bare capsule (pb_tensor.cc FromDLPack)."""
    from bls.pipeline.steps import prepare
    from bls.testing import api

    handed, read = [], []
    real_dlpack, real_from = api.Tensor.__dlpack__, api.Tensor.from_dlpack
    monkeypatch.setattr(api.Tensor, "__dlpack__",
                        lambda self, stream=None: read.append(self.name()) or real_dlpack(self))
    monkeypatch.setattr(api.Tensor, "from_dlpack", staticmethod(
        lambda name, value: handed.append(type(value).__name__) or real_from(name, value)))
    model_dir = exported.repository / MODEL_NAME
    runner = double.load_model(model_dir, model_config_dict(model_dir / "configs" / "embedded.pbtxt"))
    model_input = prepare(images["tall.png"], exported.meta).model_input
    [served] = double.execute(runner, [double.request({MODEL_INPUT.name: model_input})])
    assert not served.has_error(), served.error().message()
    assert read == [MODEL_INPUT.name]
    assert handed == ["Tensor"] * len(exported.meta.outputs), handed  # torch.Tensor each


@pytest.mark.parametrize("model,config_file", [
    ("preprocess", "config.pbtxt"), ("postprocess", "config.pbtxt"),
    (MODEL_NAME, "configs/embedded.pbtxt"), ("pipeline_bls", "config.pbtxt")])
def test_an_unknown_config_parameter_fails_the_load_by_name(double, exported, model, config_file):
    from bls.contract.parameters import PYTHON_MODELS

    model_dir = exported.repository / model
    config = model_config_dict(model_dir / config_file)
    config.setdefault("parameters", {})["max_pixel"] = {"string_value": "10"}
    with pytest.raises(ValueError) as info:
        double.load_model(model_dir, config)
    message = str(info.value)
    assert message.startswith(f"config parameter 'max_pixel': is not a known config parameter "
                              f"of {model}; known: ")
    assert all(name in message for name in PYTHON_MODELS[model].names)


def test_the_ensemble_postprocess_refuses_answers_over_its_bound(double, exported, images):
    pre = double.load_model(exported.repository / "preprocess")
    config = model_config_dict(exported.repository / "postprocess" / "config.pbtxt")
    config.setdefault("parameters", {})["max_answer_bytes"] = {"string_value": "5000"}
    post = double.load_model(exported.repository / "postprocess", config)
    [prepared] = double.execute(pre, [double.request(
        {PIPELINE_INPUT.name: as_bytes_tensor(images["scene.jpg"], False)})])
    tensors = {t.name(): t.as_numpy() for t in prepared.output_tensors()}
    outputs = double.models[MODEL_NAME](tensors, {})
    dense, rle = double.execute(post, [
        double.request({**outputs, ORIGINAL_SIZE.name: tensors[ORIGINAL_SIZE.name]},
                       {"mask_format": "dense", "score_threshold": 0}),
        double.request({**outputs, ORIGINAL_SIZE.name: tensors[ORIGINAL_SIZE.name]},
                       {"score_threshold": 0})])
    assert "over this server's max_answer_bytes of 5,000; ask mask_format=rle" in \
        dense.error().message()
    assert not rle.has_error()
