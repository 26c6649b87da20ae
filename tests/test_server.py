"""Against the real tritonserver (embedded, started by run_triton.sh on free loopback
ports), over HTTP and gRPC: the served answer equals the in-process reference built
from the same TorchScript file and the same bls functions."""

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bls.backend.metrics import DURATION_METRIC, REQUESTS_METRIC, STAGES
from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import RequestOptions
from bls.contract.tensors import (ENSEMBLE_NAME, PIPELINE_INPUT, PIPELINE_NAME, PIPELINE_OUTPUTS,
                                  MaskFormat)
from client import statistics
from client.metrics import scrape, scrape_settled, scrape_until, value

pytestmark = pytest.mark.server
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


def connect(server, protocol):
    module = PROTOCOLS[protocol]
    url = server.http_url if protocol == "http" else server.grpc_url
    return module, module.InferenceServerClient(url)


def image_input(module, data: bytes, batched: bool):
    shape = [1, 1] if batched else [1]
    tensor = module.InferInput(PIPELINE_INPUT.name, shape, PIPELINE_INPUT.dtype)
    tensor.set_data_from_numpy(np.array([data], dtype=object).reshape(shape))
    return tensor


def answer_of(result, batched: bool) -> dict:
    values = {s.name: result.as_numpy(s.name) for s in PIPELINE_OUTPUTS}
    return {k: v[0] for k, v in values.items()} if batched else values


def infer(server, protocol, data, parameters=None, model=PIPELINE_NAME):
    module, client = connect(server, protocol)
    batched = model == PIPELINE_NAME
    # Closed here: an open keep-alive connection makes the server wait 30 s at stop.
    with client:
        result = client.infer(model, [image_input(module, data, batched)], parameters=parameters)
    return answer_of(result, batched)


def masks_of(answer) -> np.ndarray:
    """bool [N, H, W] from whichever mask format the answer carries (client.results)."""
    from client.results import Detections, decode_masks

    det = Detections.from_arrays(answer)
    if not det.has_masks:
        return np.zeros((0, *det.image_size), bool)
    return decode_masks(det).astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def assert_matches(served, expected):
    """Classes equal, boxes within 1e-3 px, every mask IoU >= 0.99."""
    assert served["classes"].tolist() == expected["classes"].tolist()
    assert [n.decode() for n in served["class_names"]] == [n.decode() for n in expected["class_names"]]
    np.testing.assert_allclose(served["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(served["scores"], expected["scores"], atol=1e-5, rtol=0)
    assert served["image_size"].tolist() == expected["image_size"].tolist()
    a, b = masks_of(served), masks_of(expected)
    assert a.shape == b.shape
    if len(a):
        assert mask_iou(a, b).min() >= 0.99


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["scene.jpg", "tall.png", "gray.png"])
def test_served_answer_equals_in_process_reference(server, reference, images, protocol, name):
    served = infer(server, protocol, images[name], {"score_threshold": 0.0})
    expected = reference(images[name], RequestOptions(0.0))
    assert len(expected["scores"]) > 0, "precondition: the seeded model detects something"
    assert_matches(served, expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dense_masks_and_request_parameters(server, reference, images, protocol):
    options = RequestOptions(0.3, 5, MaskFormat.DENSE)
    served = infer(server, protocol, images["scene.jpg"],
                   {"score_threshold": 0.3, "max_detections": 5, "mask_format": "dense"})
    expected = reference(images["scene.jpg"], options)
    assert 0 < len(served["scores"]) <= 5 and served["scores"].min() >= 0.3
    assert served["masks"].shape == (len(served["scores"]), 240, 320)
    assert served["masks_rle"].shape == (0,)
    assert_matches(served, expected)
    bare = infer(server, protocol, images["scene.jpg"], {"mask_format": "none"})
    assert bare["masks_rle"].shape == (0,) and bare["masks"].shape == (0, 240, 320)
    assert len(bare["scores"]) > 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", [PIPELINE_NAME, ENSEMBLE_NAME])
def test_polygon_and_box_masks_decode_to_the_reference_masks(server, reference, images,
                                                             protocol, model):
    """box and polygon decode to exactly the RLE masks (holes included), each in its own
    outputs only."""
    expected = reference(images["scene.jpg"], RequestOptions(0.0))
    rle = masks_of(expected)
    assert len(rle) > 0, "precondition: the seeded model detects something"
    box = infer(server, protocol, images["scene.jpg"], {"score_threshold": 0.0,
                                                        "mask_format": "box"}, model)
    assert box["mask_windows"].shape == (len(rle), 4) and box["masks_rle"].shape == (0,)
    np.testing.assert_array_equal(masks_of(box), rle)
    polygon = infer(server, protocol, images["scene.jpg"], {"score_threshold": 0.0,
                                                            "mask_format": "polygon"}, model)
    assert polygon["masks_polygon"].shape == (len(rle),) and polygon["masks_box"].shape == (0,)
    np.testing.assert_array_equal(masks_of(polygon), rle)
    coarse = infer(server, protocol, images["scene.jpg"], {
        "score_threshold": 0.0, "mask_format": "polygon", "polygon_tolerance": 2}, model)
    assert sum(map(len, coarse["masks_polygon"])) < sum(map(len, polygon["masks_polygon"]))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_zero_detections_answer_empty_outputs(server, reference, empty_image, protocol):
    assert len(reference(empty_image, RequestOptions(0.0))["scores"]) == 0, \
        "precondition: the model itself returns no detections for this image"
    served = infer(server, protocol, empty_image, {"score_threshold": 0.0})
    assert served["boxes"].shape == (0, 4) and served["scores"].shape == (0,)
    assert served["masks_rle"].shape == (0,) and served["masks"].shape == (0, 120, 160)
    assert served["image_size"].tolist() == [120, 160]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("data,parameters,message", [
    (b"definitely not an image", None, "pipeline_bls: input 'image': cannot be decoded"),
    (b"", None, "pipeline_bls: input 'image': is empty"),
    (None, {"mask_format": "svg"}, "pipeline_bls: parameter 'mask_format': must be one of"),
    (None, {"score_threshold": -1}, "pipeline_bls: parameter 'score_threshold': must be in [0, 1]"),
    (None, {"max_detection": 3}, "pipeline_bls: parameter 'max_detection': is not a known"),
])
def test_bad_requests_get_invalid_arg_naming_the_problem(server, images, protocol, data,
                                                         parameters, message):
    with pytest.raises(InferenceServerException) as info:
        infer(server, protocol, images["gray.png"] if data is None else data, parameters)
    assert message in info.value.message()
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    _, client = connect(server, protocol)
    with client:
        assert client.is_server_ready() and client.is_model_ready(PIPELINE_NAME)


def _stats(client, model):
    """(executions, requests handled: client/statistics.py)."""
    counts = statistics.per_model(client.get_inference_statistics(model, as_json=True))[model]
    return counts["executions"], statistics.handled(counts)


def test_batch_with_one_bad_image_answers_the_neighbours(server, reference, images):
    """Four requests sent together meet in one pipeline_bls execute (the test repository
    waits up to 200 ms to form a batch); the bad one fails alone, its neighbours answered.
    (execute returns the batch's answers together: bls/orchestration/orchestrator.py.)"""
    _, client = connect(server, "grpc")
    with client:
        payloads = [images["scene.jpg"], b"GIF89a truncated", images["tall.png"],
                    images["gray.png"]]
        before = _stats(client, PIPELINE_NAME)
        counted_before = scrape_settled(server.metrics_url)  # earlier tests' counts in
        answers: queue.Queue = queue.Queue()
        for i, data in enumerate(payloads):
            client.async_infer(PIPELINE_NAME, [image_input(grpcclient, data, True)],
                               callback=lambda result, error, i=i: answers.put((i, result, error)),
                               parameters={"score_threshold": 0.0})
        arrivals = [answers.get(timeout=300) for _ in payloads]
        results = {i: (r, e) for i, r, e in arrivals}
        after = _stats(client, PIPELINE_NAME)
        result, error = results[1]
        assert result is None and "input 'image': cannot be decoded" in error.message()
        for i in (0, 2, 3):
            result, error = results[i]
            assert error is None, error
            assert_matches(answer_of(result, True), reference(payloads[i], RequestOptions(0.0)))
        # pipeline_bls's own counters tell the failure apart (Triton's say 4 successes).
        counted = scrape_until(server.metrics_url, lambda now: sum(
            value(now, REQUESTS_METRIC, outcome=o) - value(counted_before, REQUESTS_METRIC,
                                                            outcome=o)
            for o in ("ok", "invalid")) >= len(payloads))
        for outcome, expected in (("ok", 3), ("invalid", 1)):
            assert (value(counted, REQUESTS_METRIC, outcome=outcome)
                    - value(counted_before, REQUESTS_METRIC, outcome=outcome)) == expected
        spent = {stage: value(counted, DURATION_METRIC, stage=stage)
                 - value(counted_before, DURATION_METRIC, stage=stage) for stage in STAGES}
        assert spent["total"] >= spent["prepare"] + spent["model"] + spent["finish"] > 0
        executions, handled = after[0] - before[0], after[1] - before[1]
        assert handled == len(payloads)
        assert executions < len(payloads), \
            f"{executions} executions for {len(payloads)} requests: not batched"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ensemble_answers_the_same_as_pipeline_bls(server, images, protocol):
    for name in ("scene.jpg", "gray.png"):
        parameters = {"score_threshold": 0.1, "max_detections": 8}
        bls = infer(server, protocol, images[name], parameters)
        ensemble = infer(server, protocol, images[name], parameters, model=ENSEMBLE_NAME)
        assert len(bls["scores"]) > 0
        assert_matches(ensemble, bls)
        assert ensemble["masks_rle"].tolist() == bls["masks_rle"].tolist()


def test_model_config_tells_clients_the_metadata(server, exported):
    _, client = connect(server, "http")
    with client:
        config = client.get_model_config(PIPELINE_NAME)
        assert ModelMetadata.from_model_config(config) == exported.meta
        assert config["max_batch_size"] == 8
        metadata = client.get_model_metadata(PIPELINE_NAME)
        assert [o["name"] for o in metadata["outputs"]] == [s.name for s in PIPELINE_OUTPUTS]
        # mask_rcnn is the embedded runner here, with the contract's tensors
        runner = client.get_model_config("mask_rcnn")
        assert runner["backend"] == "python"
        assert [o["name"] for o in runner["output"]] == [s.name for s in exported.meta.outputs]
        assert [i["name"] for i in metadata["inputs"]] == [PIPELINE_INPUT.name]
