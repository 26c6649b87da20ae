"""The repository's model.py files, driven through the triton_python_backend_utils test
double with BLS routed to the exported TorchScript file in process. Logic only: the
same paths run against the real server in test_server.py."""

import numpy as np
import pytest

from bls.contract import (MODEL_INPUT, MODEL_NAME, ORIGINAL_SIZE, PIPELINE_INPUT,
                          PIPELINE_OUTPUTS, MaskFormat, model_outputs)
from bls.metrics import DURATION_METRIC, REQUESTS_METRIC, STAGES
from bls.request import RequestOptions
from tests.triton_double import TRITONSERVER_MEMORY_CPU, TritonDouble, TritonError, model_config_dict


def as_bytes_tensor(data: bytes, batched: bool) -> np.ndarray:
    return np.array([data], dtype=object).reshape((1, 1) if batched else (1,))


@pytest.fixture
def double(torchscript):
    def mask_rcnn(inputs, _params):
        return torchscript(inputs[MODEL_INPUT.name])

    with TritonDouble({MODEL_NAME: mask_rcnn}).installed() as d:
        yield d


@pytest.fixture
def pipeline_bls(double, exported):
    model = double.load_model(exported.repository / "pipeline_bls")
    yield model
    model.finalize()


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


def test_a_batch_with_bad_requests_answers_each_on_its_own(double, pipeline_bls, reference, images):
    requests = [
        double.request({PIPELINE_INPUT.name: as_bytes_tensor(images["scene.jpg"], True)}),
        double.request({PIPELINE_INPUT.name: as_bytes_tensor(b"\x89PNG broken", True)}),
        double.request({PIPELINE_INPUT.name: as_bytes_tensor(images["tall.png"], True)},
                       {"mask_format": "dense", "score_threshold": 0.2, "max_detections": 4}),
        double.request({"wrong_name": as_bytes_tensor(images["tall.png"], True)}),
        double.request({PIPELINE_INPUT.name: as_bytes_tensor(images["gray.png"], True)},
                       {"score_threshold": 7}),
    ]
    responses = double.execute(pipeline_bls, requests)
    first = outputs_of(responses[0], batched=True)
    assert len(first["scores"]) > 0, "the seeded model should detect something here"
    assert_same_answer(first, reference(images["scene.jpg"]))
    third = outputs_of(responses[2], batched=True)
    assert_same_answer(third, reference(images["tall.png"],
                                        RequestOptions(0.2, 4, MaskFormat.DENSE)))
    assert 0 < len(third["scores"]) <= 4 and third["masks"].shape[0] == len(third["scores"])
    for i, message in [(1, "pipeline_bls: input 'image': cannot be decoded"),
                       (3, "pipeline_bls: input 'image': is missing"),
                       (4, "pipeline_bls: parameter 'score_threshold': must be in [0, 1], got 7.0")]:
        assert responses[i].has_error()
        assert responses[i].error().code() == TritonError.INVALID_ARG
        assert responses[i].error().message().startswith(message), responses[i].error().message()
    # Only the two good requests reached the model, as BLS requests asking for host memory.
    model_calls = [c for c in double.calls if c.model_name == MODEL_NAME]
    assert len(model_calls) == 2
    call = model_calls[0]
    assert call.model_name == MODEL_NAME
    assert call.requested_output_names == [s.name for s in model_outputs(28)]
    assert call.preferred_memory.preferred_memory_type == TRITONSERVER_MEMORY_CPU
    assert [t.name() for t in call.inputs()] == [MODEL_INPUT.name]
    # Counted by outcome and timed by stage (Triton's statistics stop at execute's return).
    assert double.metric(REQUESTS_METRIC, outcome="ok") == 2
    assert double.metric(REQUESTS_METRIC, outcome="invalid") == 3
    spent = {stage: double.metric(DURATION_METRIC, stage=stage) for stage in STAGES}
    assert min(spent.values()) > 0
    assert spent["total"] >= spent["prepare"] + spent["model"] + spent["finish"]


def test_zero_detections_answer_empty(double, pipeline_bls, empty_image, torchscript, exported):
    from bls.pipeline import prepare

    model_input = prepare(empty_image, exported.meta).model_input
    assert len(torchscript(model_input)["scores__3"]) == 0, "precondition: the model finds nothing"
    [response] = double.execute(pipeline_bls, [
        double.request({PIPELINE_INPUT.name: as_bytes_tensor(empty_image, True)}, {"score_threshold": 0})])
    out = outputs_of(response, batched=True)
    assert out["boxes"].shape == (0, 4) and out["masks_rle"].shape == (0,)
    assert out["image_size"].tolist() == [120, 160]


def test_model_failure_is_an_internal_error_naming_mask_rcnn(double, pipeline_bls, images):
    def broken(inputs, params):
        raise RuntimeError("CUDA out of memory (simulated)")

    double.models[MODEL_NAME] = broken
    def request():
        return double.request({PIPELINE_INPUT.name: as_bytes_tensor(images["scene.jpg"], True)})

    for response in double.execute(pipeline_bls, [request(), request()]):
        assert response.error().code() == TritonError.INTERNAL
        assert "mask_rcnn failed: CUDA out of memory (simulated)" in response.error().message()
    assert double.metric(REQUESTS_METRIC, outcome="failed") == 2
    del double.models[MODEL_NAME]
    [response] = double.execute(pipeline_bls, [request()])
    assert "Model 'mask_rcnn' is not ready" in response.error().message()


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
    from bls.pipeline import prepare

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


def test_a_cancelled_request_stops_before_the_model(double, pipeline_bls, images):
    cancelled = double.request({PIPELINE_INPUT.name: as_bytes_tensor(images["scene.jpg"], True)})
    cancelled.cancelled = True
    live = double.request({PIPELINE_INPUT.name: as_bytes_tensor(images["tall.png"], True)})
    first, second = double.execute(pipeline_bls, [cancelled, live])
    assert first.has_error() and first.error().code() == TritonError.CANCELLED
    assert first.error().message() == "pipeline_bls: cancelled: before the mask_rcnn call"
    assert not second.has_error()
    assert len([c for c in double.calls if c.model_name == MODEL_NAME]) == 1
    assert double.metric(REQUESTS_METRIC, outcome="cancelled") == 1
    assert double.metric(REQUESTS_METRIC, outcome="ok") == 1


def test_execute_returns_while_answers_run_up_to_max_in_flight(double, pipeline_bls, images):
    """execute hands its requests to tasks and returns, so Triton can pass the instance
    the next batch; with max_in_flight_requests unanswered, it waits for one to finish."""
    import asyncio

    async def scenario():
        release, started = asyncio.Event(), []

        async def respond(request):
            started.append(request)
            await release.wait()

        pipeline_bls._respond = respond
        pipeline_bls.max_answering = 2
        request = lambda: double.request(  # noqa: E731
            {PIPELINE_INPUT.name: as_bytes_tensor(images["scene.jpg"], True)})
        assert await asyncio.wait_for(pipeline_bls.execute([request()]), 1) is None
        held = asyncio.ensure_future(pipeline_bls.execute([request(), request()]))
        await asyncio.sleep(0.05)
        assert len(started) == 3 and not held.done()
        release.set()
        assert await asyncio.wait_for(held, 1) is None
        assert not pipeline_bls.answering

    asyncio.run(scenario())
