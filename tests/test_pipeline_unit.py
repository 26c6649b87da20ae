"""pipeline_bls's orchestration (bls/orchestration/orchestrator.py) through its model.py and the
bls.testing double, with BLS routed to the exported TorchScript file in process.

The double behaves like the stub where these tests look: requests unusable once execute
returns, the stub's checks of the responses execute returns, BLS refused in finalize, and
it records which calls are IPC round trips in the stub. So the lifecycle and isolation
promises are checked here without a server; the same paths run against the real server
in test_server.py, test_reliability_server.py and test_stops_server.py. pipeline_bls
counts its metrics in memory and flushes them every 250 ms: ``flushed(model)`` waits for
a flush before a test reads them."""

import json
import threading
import time

import numpy as np
import pytest

import bls.orchestration.orchestrator
import bls.backend.process
from bls.backend.metrics import DURATION_METRIC, REQUESTS_METRIC, STAGES
from bls.contract.parameters import MAX_ANSWER_BYTES, PIPELINE_PARAMETERS, RequestOptions
from bls.contract.tensors import (MODEL_INPUT, MODEL_NAME, MONITORING_NAME, MONITORING_OUTPUT,
                                  PIPELINE_INPUT, PIPELINE_NAME, PIPELINE_OUTPUTS, MaskFormat,
                                  model_output)
from bls.monitoring.policy import POLICY_PARAMETER
from bls.testing import TRITONSERVER_MEMORY_CPU, TritonDouble, TritonError, model_config_dict
from tests.test_models_unit import assert_same_answer

CALLS = "pipeline_monitoring_calls_total"


def image_tensor(data: bytes) -> np.ndarray:
    return np.array([[data]], dtype=object)  # [batch 1, 1]


def with_parameters(config: dict, **values) -> dict:
    config = json.loads(json.dumps(config))
    for key, value in values.items():
        config.setdefault("parameters", {})[key] = {"string_value": str(value)}
    return config


class Gate:
    """A routed model that waits for ``open()`` (a hung model, until the test says)."""

    def __init__(self, route):
        self.route, self.opened, self.entered = route, threading.Event(), threading.Semaphore(0)

    def __call__(self, inputs, params):
        self.entered.release()
        assert self.opened.wait(60), "the test never opened the gate"
        return self.route(inputs, params)

    def open(self):
        self.opened.set()


@pytest.fixture
def double(torchscript):
    def mask_rcnn(inputs, _params):
        return torchscript(inputs[MODEL_INPUT.name])

    with TritonDouble({MODEL_NAME: mask_rcnn}).installed() as d:
        yield d


@pytest.fixture
def load(double, exported):
    """load(**config parameters) -> pipeline_bls's model, finalized at the end."""
    loaded = []

    def load(**parameters):
        config = with_parameters(
            model_config_dict(exported.repository / PIPELINE_NAME / "config.pbtxt"), **parameters)
        model = double.load_model(exported.repository / PIPELINE_NAME, config)
        loaded.append(model)
        return model

    yield load
    for model in loaded:
        model.finalize()


def request(double, data: bytes, parameters=None):
    return double.request({PIPELINE_INPUT.name: image_tensor(data)}, parameters)


def outputs_of(response):
    assert not response.has_error(), response.error().message()
    values = {t.name(): t.as_numpy() for t in response.output_tensors()}
    assert list(values) == [s.name for s in PIPELINE_OUTPUTS]
    return {k: v[0] for k, v in values.items()}  # pipeline_bls is batched: dim 0 is 1


def calls_of(double) -> int:
    return len(model_calls(double))


def model_calls(double):
    return [c for c in double.calls if c.model_name == MODEL_NAME]


def flushed(model):
    """Wait until what pipeline_bls counted so far is in the double's metrics."""
    assert model.handler.counters.wait_flushed(5), "the metrics were not flushed in 5 s"


# --------------------------------------------------------------------------- answers
def test_a_batch_with_bad_requests_answers_each_on_its_own(double, load, reference, images,
                                                          exported):
    """Each request is read in execute (the double releases them when it returns, as
    Triton does) and answered once, each on its own."""
    model = load()
    requests = [
        request(double, images["scene.jpg"]),
        request(double, b"\x89PNG broken"),
        request(double, images["tall.png"], {"mask_format": "dense", "score_threshold": 0.2,
                                              "max_detections": 4}),
        double.request({"wrong_name": image_tensor(images["tall.png"])}),
        request(double, images["gray.png"], {"score_threshold": 7}),
    ]
    responses = double.execute(model, requests)
    first = outputs_of(responses[0])
    assert len(first["scores"]) > 0, "the seeded model should detect something here"
    assert_same_answer(first, reference(images["scene.jpg"]))
    third = outputs_of(responses[2])
    assert_same_answer(third, reference(images["tall.png"], RequestOptions(0.2, 4, MaskFormat.DENSE)))
    assert 0 < len(third["scores"]) <= 4 and third["masks"].shape[0] == len(third["scores"])
    for i, message in [(1, "pipeline_bls: input 'image': cannot be decoded"),
                       (3, "pipeline_bls: input 'image': is missing"),
                       (4, "pipeline_bls: parameter 'score_threshold': must be in [0, 1], got 7.0")]:
        assert responses[i].error().code() == TritonError.INVALID_ARG
        assert responses[i].error().message().startswith(message), responses[i].error().message()
    calls = model_calls(double)
    assert len(calls) == 2  # only the good ones reached the model, asking for host memory
    assert calls[0].requested_output_names() == [s.name for s in exported.meta.outputs]
    assert calls[0].preferred_memory.preferred_memory_type == TRITONSERVER_MEMORY_CPU
    assert [t.name() for t in calls[0].inputs()] == [MODEL_INPUT.name]
    flushed(model)
    assert double.metric(REQUESTS_METRIC, outcome="ok") == 2
    assert double.metric(REQUESTS_METRIC, outcome="invalid") == 3
    spent = {stage: double.metric(DURATION_METRIC, stage=stage) for stage in STAGES}
    assert min(spent.values()) > 0
    assert spent["total"] >= spent["prepare"] + spent["model"] + spent["finish"]


def test_an_answer_holds_only_the_outputs_the_client_asked_for(double, load, images,
                                                                reference):
    """With Python 3.12's stub, a response holding an output the client did not
    ask for kills the stub (measured on 2.51; the double refuses it as that crash)."""
    model = load()
    asked = ["scores", "masks_rle"]
    requests = [double.request({PIPELINE_INPUT.name: image_tensor(images["scene.jpg"])},
                               requested_output_names=asked),
                request(double, images["scene.jpg"])]
    subset, everything = double.execute(model, requests)
    assert not subset.has_error(), subset.error().message()
    assert [t.name() for t in subset.output_tensors()] == asked
    expected = reference(images["scene.jpg"])
    got = {t.name(): t.as_numpy()[0] for t in subset.output_tensors()}
    np.testing.assert_array_equal(got["scores"], expected["scores"])
    assert list(got["masks_rle"]) == list(expected["masks_rle"])
    assert len(outputs_of(everything)) == len(PIPELINE_OUTPUTS)


def test_malformed_requests_are_answered_before_execute_returns(double, load, images):
    model = load()
    missing = double.request({"wrong_name": image_tensor(images["tall.png"])})
    misspelt = request(double, images["tall.png"], {"score_treshold": 0.1})
    answers = model.execute([missing, misspelt])  # straight, not through double.execute
    assert calls_of(double) == 0  # no job was started for them
    for answer in answers:
        assert answer.error().code() == TritonError.INVALID_ARG


def test_zero_detections_answer_empty(double, load, empty_image, torchscript, exported):
    from bls.pipeline.steps import prepare

    model_input = prepare(empty_image, exported.meta).model_input
    scores = torchscript(model_input)[model_output(exported.meta.outputs, "scores").name]
    assert len(scores) == 0, "precondition: the model finds nothing"
    [response] = double.execute(load(), [request(double, empty_image, {"score_threshold": 0})])
    out = outputs_of(response)
    assert out["boxes"].shape == (0, 4) and out["masks_rle"].shape == (0,)
    assert out["image_size"].tolist() == [120, 160]


def test_dense_answers_over_the_bound_are_refused_before_they_are_built(double, load, images):
    model = load(max_answer_bytes=1000)
    [small, dense, rle] = double.execute(model, [
        request(double, images["scene.jpg"], {"mask_format": "dense", "max_detections": 0}),
        request(double, images["scene.jpg"], {"mask_format": "dense", "score_threshold": 0}),
        request(double, images["scene.jpg"], {"score_threshold": 0})])
    assert outputs_of(small)["masks"].shape == (0, 240, 320)
    assert dense.error().code() == TritonError.INVALID_ARG
    message = dense.error().message()
    assert message.startswith("pipeline_bls: parameter 'mask_format': the answer would be ")
    assert "dense masks of 240x320" in message and "max_answer_bytes of 1,000" in message
    assert "mask_format=rle" in message
    assert len(outputs_of(rle)["masks_rle"]) > 0
    assert PIPELINE_PARAMETERS.read({})["max_answer_bytes"] == MAX_ANSWER_BYTES


# --------------------------------------------------------------------------- errors
def test_model_errors_map_to_codes_a_client_can_act_on(double, load, images):
    model = load()

    def broken(inputs, params):
        raise RuntimeError("CUDA out of memory (simulated)")

    double.models[MODEL_NAME] = broken
    [failed] = double.execute(model, [request(double, images["scene.jpg"])])
    assert failed.error().code() == TritonError.INTERNAL
    assert failed.error().message() == ("pipeline_bls: mask_rcnn failed: "
                                        "CUDA out of memory (simulated)")
    for message in ("Failed for execute the inference request. Model 'mask_rcnn' is not ready.",
                    "Stub process 'mask_rcnn_0_0' is not healthy.", "Server not ready"):
        def unavailable(inputs, params, message=message):
            raise RuntimeError(message)  # the real server's BLS errors, all code INTERNAL

        double.models[MODEL_NAME] = unavailable
        [response] = double.execute(model, [request(double, images["scene.jpg"])])
        assert response.error().code() == TritonError.UNAVAILABLE, message
        assert response.error().message() == f"pipeline_bls: mask_rcnn is unavailable: {message}"
    flushed(model)
    assert double.metric(REQUESTS_METRIC, outcome="failed") == 1
    assert double.metric(REQUESTS_METRIC, outcome="unavailable") == 3


def test_a_timeout_is_answered_unavailable_and_holds_its_slot_until_the_model_lets_go(
        double, load, images, torchscript, exported):
    from bls.pipeline.steps import prepare

    # Computed now, so that once the gate opens mask_rcnn answers at once, however busy
    # the machine: only the gate decides what is late.
    outputs = torchscript(prepare(images["scene.jpg"], exported.meta).model_input)
    gate = Gate(lambda inputs, _: outputs)
    double.models[MODEL_NAME] = gate
    model = load(mask_rcnn_timeout_us=1_500_000, max_in_flight_requests=1)
    started = time.monotonic()
    [response] = double.execute(model, [request(double, images["scene.jpg"])])
    assert time.monotonic() - started < 20
    assert response.error().code() == TritonError.UNAVAILABLE
    assert response.error().message() == ("pipeline_bls: mask_rcnn did not answer within "
                                          "mask_rcnn_timeout_us=1500000")
    flushed(model)
    assert double.metric(REQUESTS_METRIC, outcome="timeout") == 1
    # The call still runs in mask_rcnn: the one slot stays taken, the next execute waits.
    nxt = request(double, images["scene.jpg"])
    answered = []
    waiting = threading.Thread(target=lambda: answered.extend(model.execute([nxt])))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive(), "execute took a slot that a timed-out call still holds"
    gate.open()
    waiting.join(30)
    assert len(answered) == 1 and not answered[0].has_error()


def test_cancellation_is_read_once_before_the_model_call(double, load,
                                                                        images, monkeypatch):
    """The client gives up while its image is being prepared: its request never reaches
    mask_rcnn. The check is read from the request (valid: execute waits for its jobs), on
    the job's thread, once per request: it is an IPC round trip in the stub."""
    entered, opened = threading.Semaphore(0), threading.Event()
    real_prepare = bls.orchestration.orchestrator.prepare

    def gated_prepare(*args):
        entered.release()
        assert opened.wait(60), "the test never opened the gate"
        return real_prepare(*args)

    monkeypatch.setattr(bls.orchestration.orchestrator, "prepare", gated_prepare)
    model = load()
    cancelled, live = request(double, images["scene.jpg"]), request(double, images["tall.png"])
    answered = []
    running = threading.Thread(target=lambda: answered.extend(
        double.execute(model, [cancelled, live])))
    running.start()  # the requests are read; their jobs wait in prepare
    assert entered.acquire(timeout=30) and entered.acquire(timeout=30)
    double.cancel(cancelled)
    opened.set()
    running.join(30)
    [first, second] = answered
    assert first.error().code() == TritonError.CANCELLED
    assert first.error().message() == "pipeline_bls: cancelled: before the mask_rcnn call"
    assert not second.has_error()
    assert len(model_calls(double)) == 1, "the cancelled request reached mask_rcnn"
    checks = [kind for kind, _ in double.round_trips if kind == "is_cancelled"]
    assert len(checks) == 2, f"{len(checks)} cancellation checks for 2 requests"
    flushed(model)
    assert double.metric(REQUESTS_METRIC, outcome="cancelled") == 1


def test_a_request_is_carried_by_one_thread_with_two_round_trips(double, load, images):
    """Each request's path, in the stub's IPC round trips: one cancellation check and the
    BLS call, on the one thread that carries it; the answers go back with execute's
    return; metric counts reach the backend from the metrics thread, never from a
    request's thread."""
    model = load()
    requests = [request(double, images[name]) for name in ("scene.jpg", "tall.png", "gray.png")]
    answers = double.execute(model, requests)
    assert not any(a.has_error() for a in answers)
    flushed(model)
    by_thread: dict[str, list[str]] = {}
    for kind, thread in double.round_trips:
        by_thread.setdefault(thread, []).append(kind)
    job_threads = {t: kinds for t, kinds in by_thread.items() if "-job" in t}
    assert job_threads, by_thread
    for thread, kinds in job_threads.items():
        assert len(kinds) % 2 == 0 and kinds == ["is_cancelled", "exec"] * (
            len(kinds) // 2), f"{thread}: {kinds}"
    assert sum(len(k) for k in job_threads.values()) == 2 * len(requests)
    assert not [k for k, _ in double.round_trips if k == "send"]  # returned, not sent
    metric_threads = {t for t, kinds in by_thread.items() if "metric" in kinds}
    assert metric_threads <= {"pipeline_bls-metrics", threading.current_thread().name}, \
        metric_threads  # the test thread loaded the model: its start-time gauge
    assert double.metric(REQUESTS_METRIC, outcome="ok") == len(requests)


# --------------------------------------------------------------------------- load and stops
def test_execute_returns_when_its_batch_is_answered_and_no_sooner(double, load, images,
                                                                 torchscript):
    """While execute has not returned, the backend answers its batch itself if the stub
    dies ("Stub process ... is not healthy.", measured on 2.51); a request whose execute had
    returned would get no answer at all. So execute waits for its batch's answers, and
    returns them."""
    gate = Gate(lambda inputs, _: torchscript(inputs[MODEL_INPUT.name]))
    double.models[MODEL_NAME] = gate
    model = load()
    batch = [request(double, images["scene.jpg"]), request(double, images["tall.png"]),
             request(double, b"junk")]
    answered = []
    running = threading.Thread(target=lambda: answered.extend(model.execute(batch)))
    running.start()
    assert gate.entered.acquire(timeout=30) and gate.entered.acquire(timeout=30)
    running.join(0.3)
    assert running.is_alive(), "execute returned before its batch was answered"
    assert model.handler.held() == 2  # the junk one was answered in execute
    gate.open()
    running.join(30)
    assert not running.is_alive() and model.handler.held() == 0
    assert [a.has_error() for a in answered] == [False, False, True]


def test_finalize_leaves_nothing_unanswered_and_a_late_call_sends_nothing(double, load, images,
                                                                        torchscript, exported):
    """Triton calls finalize once execute has returned: every request is answered then.
    A model call that outlived its timeout may still run; when it ends it sends nothing,
    and the counts are flushed by finalize itself."""
    from bls.pipeline.steps import prepare

    outputs = torchscript(prepare(images["scene.jpg"], exported.meta).model_input)
    gate = Gate(lambda inputs, _: outputs)
    double.models[MODEL_NAME] = gate
    model = load(mask_rcnn_timeout_us=300_000)
    held = request(double, images["scene.jpg"])
    [response] = double.execute(model, [held])
    assert response.error().code() == TritonError.UNAVAILABLE  # the timeout
    double.finalize(model)  # BLS is refused from now on, as in the stub
    assert double.metric(REQUESTS_METRIC, outcome="timeout") == 1  # flushed by finalize
    assert model.handler._slots == 1  # the call still holds its slot
    gate.open()  # the call that was in mask_rcnn ends: its slot goes, nothing is answered
    wait_for(lambda: model.handler._slots == 0)
    assert [double.metric(REQUESTS_METRIC, outcome=o) for o in ("timeout", "ok")] == [1, 0]
    assert len(held.sender.responses) == 1


# --------------------------------------------------------------------------- parameters
def test_unknown_config_parameters_fail_the_load_by_name(load):
    with pytest.raises(ValueError, match=r"config parameter 'worker_thread': is not a known config "
                                         r"parameter of pipeline_bls; known: \[.*'worker_threads'"):
        load(worker_thread=3)


def test_keeping_freed_memory_is_the_default_and_can_be_turned_off(load, monkeypatch):
    calls = []
    monkeypatch.setattr(bls.backend.process, "keep_freed_memory", lambda: calls.append(1))
    load()
    assert calls == [1]
    load(keep_freed_memory="false")
    assert calls == [1]
    with pytest.raises(ValueError, match=r"config parameter 'keep_freed_memory': must be one of "
                                         r"\['true', 'false'\], got 'maybe'"):
        load(keep_freed_memory="maybe")


def test_reserved_and_forwarded_parameters_are_skipped_misspelt_ones_refused(double, load,
                                                                             images):
    model = load(header_forward_pattern="x-.*|traceparent")
    ok, forwarded, misspelt = double.execute(model, [
        request(double, images["scene.jpg"], {"headers": "{}", "score_threshold": 0.1}),
        request(double, images["scene.jpg"], {"X-Request-Id": "a1", "traceparent": "00-1"}),
        request(double, images["scene.jpg"], {"score_treshold": 0.1})])
    assert not ok.has_error() and not forwarded.has_error()
    assert misspelt.error().code() == TritonError.INVALID_ARG
    assert "parameter 'score_treshold': is not a known parameter of pipeline_bls" in \
        misspelt.error().message()


# --------------------------------------------------------------------------- monitoring
@pytest.fixture
def monitored(double, load):
    """pipeline_bls with every request monitored and captured, monitoring routed to a
    recording callable."""
    events = []

    def monitoring(inputs, _params):
        events.append(inputs)
        return {MONITORING_OUTPUT.name: np.zeros(0, dtype=object)}

    double.models[MONITORING_NAME] = monitoring
    model = load(**{POLICY_PARAMETER: json.dumps({"sample_rate": 1.0, "capture": "all"})})
    return model, events


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_events_carry_the_answer_and_monitoring_changes_no_answer(double, monitored, images):
    model, events = monitored
    data = images["scene.jpg"]
    [response] = double.execute(model, [request(double, data, {"score_threshold": 0.0})])
    first = outputs_of(response)
    wait_for(lambda: double.metric(CALLS, outcome="ok") == 1)
    [event] = events
    assert event["reasons"].tolist() == [b"sampled"]
    np.testing.assert_array_equal(event["scores"], first["scores"])
    np.testing.assert_array_equal(event["classes"], first["classes"])
    assert event["image"].tolist() == [data]
    assert json.loads(event["predictions"][0])["masks_rle"] == [m.decode() for m in first["masks_rle"]]

    def raising(inputs, params):
        raise RuntimeError("monitoring is broken")

    double.models[MONITORING_NAME] = raising
    [broken] = double.execute(model, [request(double, data, {"score_threshold": 0.0})])
    del double.models[MONITORING_NAME]
    [unloaded] = double.execute(model, [request(double, data, {"score_threshold": 0.0})])
    for other in (broken, unloaded):
        for name, value in outputs_of(other).items():
            np.testing.assert_array_equal(value, first[name])
    wait_for(lambda: double.metric(CALLS, outcome="failed") == 2)


def test_a_hung_monitoring_holds_no_answer(double, load, images):
    """Monitoring never answers: three times as many requests as pipeline_bls has job
    threads are all answered, each in its own time. (Events sent from the threads that
    answer, as once with async_exec, held one thread per event, and the answer after
    them waited.)"""
    gate = Gate(lambda inputs, params: {MONITORING_OUTPUT.name: np.zeros(0, dtype=object)})
    double.models[MONITORING_NAME] = gate
    model = load(max_in_flight_requests=4,
                 **{POLICY_PARAMETER: json.dumps({"sample_rate": 1.0})})
    count = 3 * model.handler.max_in_flight_requests
    for _ in range(count):
        [response] = double.execute(model, [request(double, images["tall.png"])], timeout=20)
        assert not response.has_error()
    flushed(model)
    assert double.metric(CALLS, outcome="ok") == 0  # monitoring has acknowledged nothing
    assert gate.entered.acquire(timeout=5), "no event reached monitoring"
    gate.open()  # the first event, held past timeout_ms, counts as late; the rest are ok
    wait_for(lambda: (double.metric(CALLS, outcome="timeout"),
                      double.metric(CALLS, outcome="ok")) == (1, count - 1))


def test_events_that_do_not_fit_are_dropped_late_ones_and_leftovers_counted(double, load,
                                                                           images):
    gate = Gate(lambda inputs, params: {MONITORING_OUTPUT.name: np.zeros(0, dtype=object)})
    double.models[MONITORING_NAME] = gate
    model = load(**{POLICY_PARAMETER: json.dumps({"sample_rate": 1.0, "max_pending_events": 2,
                                                  "timeout_ms": 50})})
    for _ in range(4):
        double.execute(model, [request(double, images["tall.png"])])
    flushed(model)
    assert double.metric(CALLS, outcome="dropped") == 2
    gate.open()
    wait_for(lambda: double.metric(CALLS, outcome="timeout") == 1)  # acknowledged late
    wait_for(lambda: double.metric(CALLS, outcome="ok") == 1)
    gate.opened.clear()
    double.execute(model, [request(double, images["tall.png"])])
    double.execute(model, [request(double, images["tall.png"])])
    model.finalize()
    assert double.metric(CALLS, outcome="abandoned") == 2
    gate.open()


def test_captures_over_their_bound_go_without_the_image(double, load, images):
    events = []
    double.models[MONITORING_NAME] = lambda inputs, params: (
        events.append(inputs) or {MONITORING_OUTPUT.name: np.zeros(0, dtype=object)})
    model = load(**{POLICY_PARAMETER: json.dumps({"sample_rate": 1.0, "capture": "all",
                                                  "max_capture_bytes": 100})})
    double.execute(model, [request(double, images["tall.png"])])
    wait_for(lambda: len(events) == 1)
    assert events[0]["image"].shape == (0,) and events[0]["predictions"].shape == (0,)
    flushed(model)
    assert double.metric("pipeline_monitoring_captures_skipped_total") == 1


# --------------------------------------------------------------------------- probes
def test_a_probe_is_answered_empty_without_the_model_or_monitoring(double, monitored, images):
    """python -m client probe's request: answered by pipeline_bls itself (the image is not
    read), no model call, no monitoring event though every request is monitored here,
    counted apart from the traffic."""
    model, events = monitored
    [response] = double.execute(model, [request(double, b"", {"probe": True})])
    out = outputs_of(response)
    assert out["boxes"].shape == (0, 4) and out["image_size"].tolist() == [0, 0]
    assert model_calls(double) == [] and events == []
    flushed(model)
    assert double.metric(REQUESTS_METRIC, outcome="probe") == 1
    assert double.metric(REQUESTS_METRIC, outcome="ok") == 0
    [bad] = double.execute(model, [request(double, b"", {"probe": "maybe"})])
    assert bad.error().code() == TritonError.INVALID_ARG
    assert "parameter 'probe': must be true or false, got 'maybe'" in bad.error().message()


def test_a_probe_fails_while_a_stub_of_another_instance_is_dead(double, load, monkeypatch):
    """Triton routes a probe to any instance, so each answers for all of them."""
    import bls.orchestration.orchestrator as orchestrator

    model = load()  # the test repository's pipeline_bls: instance_group count 2
    monkeypatch.setattr(orchestrator, "live_instances", lambda: 2)
    [ok] = double.execute(model, [request(double, b"", {"probe": True})])
    assert not ok.has_error()
    monkeypatch.setattr(orchestrator, "live_instances", lambda: 1)
    [dead] = double.execute(model, [request(double, b"", {"probe": True})])
    assert dead.error().code() == TritonError.UNAVAILABLE
    assert dead.error().message() == (
        "pipeline_bls: 1 of 2 pipeline_bls stub processes are dead (Triton 2.51 restarts "
        "none): reload the model or restart the server")
