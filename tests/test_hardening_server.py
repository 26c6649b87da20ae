"""The hardening promises on the real embedded server: bounded answers, error codes a
client can act on (and `client infer` retrying UNAVAILABLE), exactly one response per
request when execute fails midway, strict config parameters, forwarded headers.

One server for the module, explicit model control, headers matching ``x-trace-.*``
forwarded as request parameters; tests reconfigure pipeline_bls through Triton's load API
(a config override) and put the repository's config back afterwards.
"""

import io
import json
import queue
import struct
import threading
import time
import urllib.request
from contextlib import contextmanager, redirect_stdout

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MODEL_NAME, PIPELINE_INPUT, PIPELINE_NAME
from client import cli
from client import statistics
from client.metrics import scrape, scrape_settled, scrape_until, value
from export.repository import assemble, parameters_override
from server.launcher import TritonServer

pytestmark = pytest.mark.server

HEADERS = "x-trace-.*"
# Dense masks of the 240x320 scene are 76,800 bytes each: three fit, four do not.
MAX_ANSWER_BYTES = 240_000


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    repository = assemble(exported.model_file, tmp_path_factory.mktemp("hardening") / "repository", {
        # Requests sent together meet in one batch (the fault test needs a batch).
        PIPELINE_NAME: "dynamic_batching { max_queue_delay_microseconds: 200000 } "
        + parameters_override(monitoring_policy="", header_forward_pattern=HEADERS,
                              max_answer_bytes=MAX_ANSWER_BYTES)})
    with TritonServer(repository, extra_args=("--model-control-mode", "explicit",
                                              "--header-forward-pattern", HEADERS)) as running:
        with httpclient.InferenceServerClient(running.http_url) as admin:
            for model in (MODEL_NAME, PIPELINE_NAME):
                admin.load_model(model)
        running.repository_path = repository
        yield running


@pytest.fixture
def admin(server):
    with httpclient.InferenceServerClient(server.http_url) as client:
        yield client


@contextmanager
def configured(admin, **parameters):
    """pipeline_bls loaded with these config parameters changed, then as before. (A load
    without a config would not undo an override: Triton sees an unchanged repository.)"""
    original = admin.get_model_config(PIPELINE_NAME)
    config = json.loads(json.dumps(original))
    for key, text in parameters.items():
        config.setdefault("parameters", {})[key] = {"string_value": str(text)}
    admin.load_model(PIPELINE_NAME, config=json.dumps(config))
    try:
        yield
    finally:
        admin.load_model(PIPELINE_NAME, config=json.dumps(original))


def grpc_infer(server, data: bytes, parameters=None, headers=None, timeout=120):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        return client.infer(PIPELINE_NAME, [tensor], parameters=parameters, headers=headers,
                            client_timeout=timeout)


def http_infer(server, data: bytes, parameters=None, headers=None):
    with httpclient.InferenceServerClient(server.http_url, network_timeout=120) as client:
        tensor = httpclient.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        outputs = [httpclient.InferRequestedOutput(name, binary_data=False)  # JSON: the
                   for name in ("masks", "masks_rle", "scores")]              # costly form
        return client.infer(PIPELINE_NAME, [tensor], outputs=outputs, parameters=parameters,
                            headers=headers)


def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# --------------------------------------------------------------------------- 1: bounded answers
def test_dense_answers_over_the_bound_are_refused_naming_size_bound_and_way_out(server, images):
    data = images["scene.jpg"]
    dense = {"mask_format": "dense", "score_threshold": 0.0}
    for infer, status in ((grpc_infer, "StatusCode.INVALID_ARGUMENT"), (http_infer, "400")):
        error = refused(lambda: infer(server, data, dense))
        assert str(error.status()) == status
        message = error.message()
        assert message.startswith("pipeline_bls: parameter 'mask_format': the answer would be ")
        assert "dense masks of 240x320" in message
        assert f"over this server's max_answer_bytes of {MAX_ANSWER_BYTES:,}" in message
        assert "ask mask_format=rle" in message
        three = infer(server, data, {**dense, "max_detections": 3})
        assert three.as_numpy("masks").shape == (1, 3, 240, 320)
        assert len(infer(server, data, {"score_threshold": 0.0}).as_numpy("masks_rle")[0]) > 3


# --------------------------------------------------------------------------- 4: error codes
def outcome(server, name: str) -> float:
    return value(scrape_settled(server.metrics_url), "pipeline_requests_total", outcome=name)


def test_a_model_that_cannot_serve_is_unavailable_and_a_timeout_has_its_own_outcome(
        server, admin, images):
    data = images["scene.jpg"]
    admin.unload_model(MODEL_NAME)
    try:
        for infer, status in ((grpc_infer, "StatusCode.UNAVAILABLE"), (http_infer, "503")):
            error = refused(lambda: infer(server, data))
            assert str(error.status()) == status
            assert error.message().startswith("pipeline_bls: mask_rcnn is unavailable: ")
            assert "not ready" in error.message()
    finally:
        admin.load_model(MODEL_NAME)
    before = outcome(server, "timeout")
    with configured(admin, mask_rcnn_timeout_us=1):  # no real call answers in 1 µs
        error = refused(lambda: grpc_infer(server, data))
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert error.message() == ("pipeline_bls: mask_rcnn did not answer within "
                                   "mask_rcnn_timeout_us=1")
        counted = scrape_until(server.metrics_url, lambda now: value(
            now, "pipeline_requests_total", outcome="timeout") >= before + 1)
        assert value(counted, "pipeline_requests_total", outcome="timeout") == before + 1
    assert grpc_infer(server, data).as_numpy("scores") is not None


def test_client_infer_retries_unavailable_until_the_model_is_back(server, admin, images,
                                                                 tmp_path):
    (tmp_path / "scene.jpg").write_bytes(images["scene.jpg"])
    admin.unload_model(MODEL_NAME)

    def load_again():  # its own client: tritonclient.http's is bound to its thread
        with httpclient.InferenceServerClient(server.http_url) as other:
            other.load_model(MODEL_NAME)

    reload = threading.Timer(1.0, load_again)
    reload.start()
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            status = cli.main(["infer", str(tmp_path / "scene.jpg"), "--url", server.grpc_url,
                               "--retries", "15", "--no-overlay", "--out", str(tmp_path / "out")])
    finally:
        reload.join()
    text = printed.getvalue()
    assert status == 0, text
    assert "retr" in text and "after UNAVAILABLE" in text, text


# --------------------------------------------------------------------------- 3: one response each
FAULT = '''


_Served = TritonPythonModel


class TritonPythonModel(_Served):  # injected by the test: a bug once the first has started
    def execute(self, requests):
        read = self.handler._read

        def flaky(request):
            self.reads = getattr(self, "reads", 0) + 1
            if self.reads == 2:  # the second request of the first batch
                raise RuntimeError("fault injected after a request had started")
            return read(request)

        self.handler._read = flaky
        try:
            return self.handler.execute(requests)
        finally:
            self.handler._read = read
'''


def stats_of(client) -> dict:
    """pipeline_bls's counts in Triton's statistics (client/statistics.py)."""
    reply = client.get_inference_statistics(PIPELINE_NAME, as_json=True)
    return statistics.per_model(reply)[PIPELINE_NAME]


def test_each_request_gets_exactly_one_response_when_execute_fails_midway(server, admin,
                                                                         reference, images):
    model_py = server.repository_path / PIPELINE_NAME / "1" / "model.py"
    real = model_py.read_text()
    model_py.write_text(real + FAULT)
    answers: queue.Queue = queue.Queue()
    try:
        admin.unload_model(PIPELINE_NAME)
        admin.load_model(PIPELINE_NAME)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            before = stats_of(client)
            for i in range(4):  # sent together: one dynamic batch
                tensor = grpcclient.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
                tensor.set_data_from_numpy(np.array([[images["scene.jpg"]]], dtype=object))
                client.async_infer(PIPELINE_NAME, [tensor], client_timeout=120,
                                   callback=lambda result, error, i=i: answers.put((i, result, error)))
            ended = [answers.get(timeout=150) for _ in range(4)]
            after = stats_of(client)
            # One execute took the four (the fault struck inside a batch, after a request
            # had started), and Triton handled four requests: one response each.
            assert after["executions"] - before["executions"] == 1, (before, after)
            assert statistics.handled(after) - statistics.handled(before) == 4, (before, after)
            assert sorted(i for i, _, _ in ended) == [0, 1, 2, 3]
            assert client.is_server_live() and client.is_model_ready(PIPELINE_NAME)
    finally:
        model_py.write_text(real)
        admin.unload_model(PIPELINE_NAME)
        admin.load_model(PIPELINE_NAME)
    errors = [error for _, result, error in ended if error is not None]
    assert len(errors) == 1, [str(e) for e in errors]
    assert errors[0].status() == "StatusCode.INTERNAL"
    assert errors[0].message() == ("pipeline_bls: RuntimeError: fault injected after a request "
                                   "had started")
    expected = reference(images["scene.jpg"])
    for _, result, error in ended:
        if error is None:
            assert result.as_numpy("classes")[0].tolist() == expected["classes"].tolist()


# --------------------------------------------------------------------------- 7: strictness
def test_an_unknown_config_parameter_fails_the_load_naming_it(server, admin):
    config = admin.get_model_config(PIPELINE_NAME)
    config["parameters"]["worker_thread"] = {"string_value": "4"}
    error = refused(lambda: admin.load_model(PIPELINE_NAME, config=json.dumps(config)))
    assert ("config parameter 'worker_thread': is not a known config parameter of pipeline_bls; "
            "known: [") in error.message()
    assert "'worker_threads'" in error.message()
    del config["parameters"]["worker_thread"]
    admin.load_model(PIPELINE_NAME, config=json.dumps(config))
    assert admin.is_model_ready(PIPELINE_NAME)


def test_forwarded_headers_and_reserved_keys_pass_misspelt_parameters_do_not(server, reference,
                                                                              images):
    data = images["scene.jpg"]
    expected = reference(data, RequestOptions(0.0))
    for infer in (grpc_infer, http_infer):
        result = infer(server, data, {"score_threshold": 0.0}, headers={"x-trace-id": "abc-1"})
        assert result.as_numpy("scores")[0].tolist() == pytest.approx(expected["scores"].tolist())
        error = refused(lambda: infer(server, data, {"score_treshold": 0.0}))
        assert "parameter 'score_treshold': is not a known parameter of pipeline_bls" in error.message()
    # "headers" is a key Triton reserves and still hands to the model (measured); the
    # tritonclient libraries refuse to send it, so it goes by hand (binary data extension:
    # a JSON header, then the BYTES element as a 4-byte length and its bytes).
    payload = struct.pack("<I", len(data)) + data
    header = json.dumps({"parameters": {"headers": "{}"}, "inputs": [{
        "name": PIPELINE_INPUT.name, "shape": [1, 1], "datatype": PIPELINE_INPUT.dtype,
        "parameters": {"binary_data_size": len(payload)}}]}).encode()
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{PIPELINE_NAME}/infer", header + payload,
        {"Content-Type": "application/octet-stream",
         "Inference-Header-Content-Length": str(len(header))})
    with urllib.request.urlopen(request, timeout=120) as reply:
        assert reply.status == 200 and b'"scores"' in reply.read()


# --------------------------------------------------------------------------- 8: a stop after a failed reload
def test_a_stop_after_a_failed_reload_does_not_wait_out_the_exit_timeout(server):
    """Triton 2.51 never lets go of a version whose reload failed (after a later load it
    is listed UNLOADING), and a stop waited out the 30 s exit timeout for it (measured). run_triton.sh stops tritonserver once no
    stub is left. Last in this module: it stops the module's server."""
    with httpclient.InferenceServerClient(server.http_url) as admin:  # closed: a stop
        config = admin.get_model_config(PIPELINE_NAME)        # waits for open connections
        config["parameters"]["no_such_parameter"] = {"string_value": "1"}
        refused(lambda: admin.load_model(PIPELINE_NAME, config=json.dumps(config)))
        assert admin.is_model_ready(PIPELINE_NAME)  # the loaded version still serves
    started = time.monotonic()
    server.stop(timeout=120)
    took = time.monotonic() - started
    assert took < 20, f"the stop took {took:.1f} s:\n{server.log_text()[-3000:]}"
    assert "stopping tritonserver, which still waits for a failed reload's version" \
        in server.log_text()
