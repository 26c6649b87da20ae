"""Monitoring on the real embedded server: custom metrics on the metrics port after known
requests, sample capture under its quota, an alert stream after an injected shift, and
pipeline_bls answering the same with monitoring unloaded, raising or slow.

One server for the module, in explicit model-control mode so the tests can unload and
swap the monitoring model; every request has sample_rate 1 so each answer is an event.
"""

import json
import queue
import re
import threading
import time
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import (MODEL_NAME, MONITORING_INPUTS, MONITORING_NAME, MONITORING_OUTPUT,
                                  PIPELINE_INPUT, PIPELINE_NAME)
from bls.monitoring.event import event_inputs
from bls.monitoring.policy import Reason
from client.metrics import scrape, value
from export.repository import assemble, parameters_override
from server.launcher import TritonServer

pytestmark = pytest.mark.server

CAPTURE_MAX_BYTES = 150_000
CAPTURE_MAX_FILES = 6
POLICY = {"sample_rate": 1.0, "capture": "all", "timeout_ms": 500}

# Stands in for monitoring/1/model.py in the fault tests: its config parameter "fault"
# says what goes wrong.
FAULTY_MONITORING = '''
import json, os, time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.fault = params.get("fault", {}).get("string_value", "raise")
        self.release = params.get("release", {}).get("string_value", "")

    def execute(self, requests):
        if self.fault == "raise":
            raise RuntimeError("monitoring fault injected by the test")
        if self.fault == "hang":  # 30 s per event, or until the test lets go
            deadline = time.monotonic() + 30
            while not os.path.exists(self.release) and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            time.sleep(15)  # "slow": far longer than the policy's 500 ms timeout
        for request in requests:
            request.get_response_sender().send(
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


@pytest.fixture(scope="module")
def setup(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitored")
    capture = root / "capture"
    repository = assemble(exported.model_file, root / "repository", {
        PIPELINE_NAME: parameters_override(monitoring_policy=json.dumps(POLICY)),
        MONITORING_NAME: parameters_override(
            capture_dir=capture, capture_max_bytes=CAPTURE_MAX_BYTES,
            capture_max_files=CAPTURE_MAX_FILES, drift_reference_size=10, drift_window_size=10,
            drift_check_every=5),
    })
    with TritonServer(repository, extra_args=("--model-control-mode", "explicit")) as server:
        with httpclient.InferenceServerClient(server.http_url) as client:
            for model in (MODEL_NAME, MONITORING_NAME, PIPELINE_NAME):
                client.load_model(model)
        yield server, repository, capture


def metrics(server) -> dict:
    return scrape(server.metrics_url)


def wait_until(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def infer(server, data: bytes, parameters=None, timeout=None) -> dict:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        result = client.infer(PIPELINE_NAME, [tensor], parameters=parameters,
                              client_timeout=timeout)
    return {name: result.as_numpy(name)[0] for name in
            ("boxes", "scores", "classes", "masks_rle", "image_size")}


def assert_same(served: dict, expected: dict) -> None:
    assert served["classes"].tolist() == expected["classes"].tolist()
    np.testing.assert_allclose(served["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    assert served["masks_rle"].tolist() == expected["masks_rle"].tolist()


def test_custom_metrics_count_known_requests_and_capture_stays_in_quota(setup, reference, images):
    server, _, capture = setup
    before = metrics(server)
    names = ["scene.jpg", "tall.png", "gray.png"]
    expected_classes = Counter()
    for name in names:
        expected = reference(images[name])
        assert_same(infer(server, images[name]), expected)
        expected_classes.update(n.decode() for n in expected["class_names"])
    assert sum(expected_classes.values()) > 0, "no detections: the test would check nothing"

    def delta(name, **labels):
        return value(metrics(server), name, **labels) - value(before, name, **labels)

    # monitoring records an event before it answers the BLS call; pipeline_bls counts the
    # call once that answer is back: a moment later (seen in a run: 2 of 3 counted)
    wait_until(lambda: delta("monitoring_events_total", reason="sampled") == len(names)
               and delta("pipeline_monitoring_calls_total", outcome="ok") == len(names),
               what="monitoring to record the events and pipeline_bls to count its calls")
    after = metrics(server)
    for class_name, count in expected_classes.items():
        got = value(after, "monitoring_detections_total", class_name=class_name) - \
            value(before, "monitoring_detections_total", class_name=class_name)
        assert got == count, class_name
    assert delta("monitoring_detections_per_request_count") == len(names)
    assert delta("monitoring_detection_score_count") == sum(expected_classes.values())
    # Triton's own metrics are on the same port.
    assert any(key[0] == "nv_inference_request_success" for key in after)

    files = list(capture.iterdir())
    assert sum(p.stat().st_size for p in files) <= CAPTURE_MAX_BYTES
    assert 0 < len(files) <= CAPTURE_MAX_FILES
    assert all(re.fullmatch(r"\d{10}\.(jpg|png|json)", p.name) for p in files)
    newest = max(p for p in files if p.suffix == ".json")
    stored = json.loads(newest.read_text())
    last = reference(images[names[-1]])
    assert stored["classes"] == last["classes"].tolist()
    assert newest.with_suffix(".png").read_bytes() == images[names[-1]]


SPECS = {spec.name: spec for spec in MONITORING_INPUTS}


def monitoring_input(name, array):
    tensor = grpcclient.InferInput(name, list(array.shape), SPECS[name].dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def send_command(client, text, parameters=None):
    array = np.array([text.encode()], dtype=object)
    client.async_stream_infer(MONITORING_NAME, [monitoring_input("command", array)],
                              parameters=parameters)


def send_event(client, scores):
    """An event straight to monitoring, as pipeline_bls would send it."""
    answer = {"scores": np.asarray(scores, np.float32), "classes": np.ones(len(scores), np.int64)}
    arrays = event_inputs([Reason.SAMPLED], answer, 20.0, None)
    client.async_stream_infer(MONITORING_NAME, [
        monitoring_input(name, arrays[name]) for name in ("reasons", "scores", "classes",
                                                           "latency_ms")])


def inject_shift(client):
    """A new reference of confident detections, then many weak ones."""
    send_command(client, "reset_reference")
    for _ in range(10):
        send_event(client, [0.95, 0.9, 0.85])
    for _ in range(10):
        send_event(client, [0.08] * 60)


def test_a_subscriber_receives_an_alert_after_a_shift(setup):
    server, _, _ = setup
    messages: queue.Queue = queue.Queue()

    def on_response(result, error):
        messages.put(error.message() if error else
                     json.loads(result.as_numpy(MONITORING_OUTPUT.name)[0]))

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=on_response)
        try:
            send_command(client, "subscribe", {"max_alerts": 1, "duration_s": 120})
            assert messages.get(timeout=30)["type"] == "subscribed"
            inject_shift(client)
            assert messages.get(timeout=30) == {"type": "reset_reference"}
            alert = messages.get(timeout=60)
            assert alert["type"] == "alert", alert
            assert alert["kind"] in ("drift_scores", "drift_detections")
            assert alert["psi"] > alert["threshold"]
            assert messages.get(timeout=30) == {"type": "end", "reason": "max_alerts reached"}
        finally:
            client.stop_stream()
    assert value(metrics(server), "monitoring_alerts_total", kind=alert["kind"]) >= 1


def test_watch_command_shows_statistics_and_alerts(setup, capsys):
    from client import cli

    server, _, _ = setup
    result = {}
    watcher = threading.Thread(target=lambda: result.update(rc=cli.main(
        ["watch", "--url", server.grpc_url, "--duration", "12", "--interval", "2"])))
    watcher.start()
    time.sleep(2)  # subscribed by now
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: None)
        try:
            inject_shift(client)
            time.sleep(1)
        finally:
            client.stop_stream()
    watcher.join(timeout=60)
    printed = capsys.readouterr().out
    assert result == {"rc": 0}, printed
    assert re.search(r"events \d+ \(dropped 0\) \| top classes: ", printed), printed
    assert "ALERT drift_" in printed and "psi" in printed
    assert re.search(r"[1-9]\d* alert\(s\) in 12 s", printed), printed


def outcomes(server) -> dict:
    values = metrics(server)
    return {o: value(values, "pipeline_monitoring_calls_total", outcome=o)
            for o in ("ok", "failed", "timeout", "dropped", "abandoned")}


def answers_unchanged(server, reference, images, outcome, count=2):
    """Send ``count`` requests, check each answer against the reference and that its
    latency owes nothing to monitoring, then wait for the outcome counter."""
    before = outcomes(server)
    data = images["scene.jpg"]
    expected = reference(data, RequestOptions(0.0))
    for _ in range(count):
        start = time.monotonic()
        assert_same(infer(server, data, {"score_threshold": 0.0}), expected)
        # The slow fault holds monitoring for 15 s per event; an answer that waited for
        # it would take that long. Answers take about a second here, a few on a busy machine.
        assert time.monotonic() - start < 10.0
    wait_until(lambda: outcomes(server)[outcome] - before[outcome] == count,
               what=f"{count} '{outcome}' outcomes")


def test_answers_are_the_same_with_monitoring_unloaded_raising_or_slow(setup, reference, images):
    server, repository, _ = setup
    model_py = repository / MONITORING_NAME / "1" / "model.py"
    real = model_py.read_text()
    with httpclient.InferenceServerClient(server.http_url) as client:
        config = client.get_model_config(MONITORING_NAME)
        try:
            client.unload_model(MONITORING_NAME)
            wait_until(lambda: not client.is_model_ready(MONITORING_NAME), what="unload")
            answers_unchanged(server, reference, images, "failed")

            model_py.write_text(FAULTY_MONITORING)
            for fault, outcome, count in (("raise", "failed", 2), ("slow", "timeout", 1)):
                config["parameters"]["fault"] = {"string_value": fault}
                client.load_model(MONITORING_NAME, config=json.dumps(config))
                answers_unchanged(server, reference, images, outcome, count)
        finally:
            model_py.write_text(real)
            client.load_model(MONITORING_NAME)


def test_a_hung_monitoring_delays_no_answer(setup, reference, images, tmp_path):
    """Monitoring takes 30 s per event. More sequential requests than the stub's default
    executor has threads (6 on 2 cores; events sent with async_exec held one each, and
    from the 7th on every answer waited ~30 s), then a concurrent burst: every answer
    comes at its own speed, within a client deadline far below 30 s."""
    server, repository, _ = setup
    model_py = repository / MONITORING_NAME / "1" / "model.py"
    real = model_py.read_text()
    release = tmp_path / "release"
    data = images["scene.jpg"]
    expected = reference(data, RequestOptions(0.0))
    with httpclient.InferenceServerClient(server.http_url) as client:
        config = client.get_model_config(MONITORING_NAME)
        config["parameters"].update(fault={"string_value": "hang"},
                                    release={"string_value": str(release)})
        model_py.write_text(FAULTY_MONITORING)
        try:
            client.load_model(MONITORING_NAME, config=json.dumps(config))
            for _ in range(12):
                assert_same(infer(server, data, {"score_threshold": 0.0}, timeout=20), expected)
            answers: queue.Queue = queue.Queue()

            def one():
                try:
                    answers.put(infer(server, data, {"score_threshold": 0.0}, timeout=20))
                except Exception as e:  # noqa: BLE001  the assertion below names it
                    answers.put(e)

            burst = [threading.Thread(target=one) for _ in range(8)]
            for thread in burst:
                thread.start()
            for thread in burst:
                thread.join()
            for _ in burst:
                answer = answers.get_nowait()
                assert isinstance(answer, dict), answer
                assert_same(answer, expected)
        finally:
            release.touch()
            model_py.write_text(real)
            client.load_model(MONITORING_NAME)
