"""Monitoring logic without a server: the policy, the drift math, the capture quota, the
statistics and metrics, the alert streams, and both model.py files through the
triton_python_backend_utils double. The real server runs them in
test_monitoring_server.py."""

import json
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bls.capture import CaptureSettings, CaptureStore, image_extension
from bls.contract import (MODEL_INPUT, MODEL_NAME, MONITORING_INPUTS, MONITORING_NAME,
                          MONITORING_OUTPUT, PIPELINE_INPUT, PIPELINE_NAME)
from bls.drift import DriftMonitor, DriftSettings, psi, shares
from bls.monitor import Event, Monitor, MonitorSettings, TritonMetrics
from bls.policy import (POLICY_PARAMETER, Capture, MonitoringPolicy, Reason, event_inputs,
                        predictions_json)
from bls.subscriptions import Subscribers, Subscription
from tests.triton_double import ResponseSender, TritonDouble, TritonError, model_config_dict


# --------------------------------------------------------------------------- policy
def test_policy_parses_and_fires_each_trigger():
    policy = MonitoringPolicy.from_json(json.dumps({
        "sample_rate": 0.1, "low_best_score": 0.4, "no_detections": True,
        "watched_classes": ["dog"], "slow_ms": 500, "capture": "flagged"}))
    scores = np.array([0.9, 0.2], np.float32)
    assert policy.reasons(scores, ["cat", "cat"], 10, draw=0.5) == []
    assert policy.reasons(scores, ["cat", "cat"], 10, draw=0.05) == [Reason.SAMPLED]
    assert policy.reasons(scores[1:], ["cat"], 10, 0.5) == [Reason.LOW_SCORE]
    assert policy.reasons(np.zeros(0, np.float32), [], 10, 0.5) == [Reason.NO_DETECTIONS]
    assert policy.reasons(scores, ["cat", "dog"], 10, 0.5) == [Reason.WATCHED_CLASS]
    assert policy.reasons(scores, ["cat", "cat"], 501, 0.5) == [Reason.SLOW]
    assert policy.captures([Reason.SAMPLED]) is False
    assert policy.captures([Reason.SAMPLED, Reason.SLOW]) is True
    assert MonitoringPolicy(capture=Capture.ALL).captures([Reason.SAMPLED])
    assert not MonitoringPolicy().enabled and not MonitoringPolicy.from_json("").enabled


@pytest.mark.parametrize("text,message", [
    ('{"sample_rate": 2}', "sample_rate must be a number in [0.0, 1.0], got 2"),
    ('{"sample_rat": 0.1}', "unknown field(s) ['sample_rat']"),
    ('{"capture": "some"}', "capture must be one of ['none', 'flagged', 'all'], got 'some'"),
    ('{"watched_classes": "dog"}', "watched_classes must be a list of class names"),
    ('{"max_in_flight": 0}', "max_in_flight must be a whole number >= 1, got 0"),
    ('{"no_detections": 1}', "no_detections must be true or false, got 1"),
    ("[1]", "must be a JSON object"),
    ("{oops", "is not JSON"),
])
def test_policy_errors_name_the_field_and_value(text, message):
    with pytest.raises(ValueError) as info:
        MonitoringPolicy.from_json(text)
    assert POLICY_PARAMETER in str(info.value) and message in str(info.value)


def answer(n=2):
    return {"boxes": np.arange(4 * n, dtype=np.float32).reshape(n, 4),
            "scores": np.linspace(0.9, 0.6, n).astype(np.float32),
            "classes": np.arange(1, n + 1, dtype=np.int64),
            "class_names": np.array([f"c{i}".encode() for i in range(1, n + 1)], dtype=object),
            "masks_rle": np.array([b"abc"] * n, dtype=object),
            "masks": np.zeros((0, 5, 6), np.uint8),
            "image_size": np.array([5, 6], np.int64)}


def test_event_inputs_follow_the_contract_and_carry_the_answer():
    specs = {s.name: s for s in MONITORING_INPUTS}
    plain = event_inputs([Reason.SAMPLED], answer(), 12.5, None)
    assert set(plain) == set(specs) - {"command"}
    for name, value in plain.items():
        assert value.dtype == specs[name].numpy_dtype, name
    assert plain["image"].shape == (0,) and plain["predictions"].shape == (0,)
    captured = event_inputs([Reason.SLOW], answer(), 12.5, b"\xff\xd8\xffimage")
    assert captured["image"].tolist() == [b"\xff\xd8\xffimage"]
    predictions = json.loads(captured["predictions"][0])
    assert predictions["class_names"] == ["c1", "c2"] and predictions["image_size"] == [5, 6]
    assert predictions["masks_rle"] == ["abc", "abc"]
    event = Event.from_arrays(captured)
    assert event.reasons == ("slow",) and event.latency_ms == 12.5
    assert json.loads(event.predictions) == json.loads(predictions_json(answer()))


def test_event_errors_name_the_input():
    good = event_inputs([Reason.SAMPLED], answer(), 1.0, None)
    with pytest.raises(ValueError, match="input 'scores': is missing"):
        Event.from_arrays({**good, "scores": None})
    with pytest.raises(ValueError, match="input 'classes': has 1 values for 2 scores"):
        Event.from_arrays({**good, "classes": np.array([1], np.int64)})
    with pytest.raises(ValueError, match="input 'latency_ms'"):
        Event.from_arrays({**good, "latency_ms": np.array([np.nan], np.float32)})


# --------------------------------------------------------------------------- drift
def test_psi_by_hand():
    # Two bins: reference 50/50, current 90/10.
    edges = np.array([0.0, 0.5, 1.0])
    reference = np.array([0.25] * 50 + [0.75] * 50)
    current = np.array([0.25] * 90 + [0.75] * 10)
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert psi(reference, current, edges) == pytest.approx(expected)
    assert psi(reference, reference, edges) == 0
    assert shares([], edges).tolist() == [0.5, 0.5]


def test_drift_alerts_once_per_excursion_and_rearms():
    rng = np.random.default_rng(0)
    drift = DriftMonitor(DriftSettings(reference_size=50, window_size=50, check_every=10,
                                       threshold=0.25))

    def feed(n, low, high, detections):
        alerts = []
        for _ in range(n):
            alerts += drift.add(rng.uniform(low, high, detections).astype(np.float32), detections)
        return alerts

    assert feed(50, 0.6, 1.0, 3) == []  # the reference
    assert feed(100, 0.6, 1.0, 3) == [] and drift.latest["scores"] < 0.1
    shifted = feed(100, 0.0, 0.3, 30)
    assert sorted(a.signal for a in shifted) == ["detections", "scores"]  # once each
    assert all(a.psi > 0.25 for a in shifted)
    assert feed(100, 0.6, 1.0, 3) == [] and drift.latest["scores"] < 0.25  # back: re-armed
    assert [a.signal for a in feed(50, 0.0, 0.3, 3)] == ["scores"]
    drift.reset()
    assert feed(49, 0.0, 0.3, 3) == [] and drift.latest == {}


# --------------------------------------------------------------------------- capture
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=25), st.integers(2, 7))
def test_capture_never_exceeds_its_quota(tmp_path_factory, sizes, max_files):
    directory = tmp_path_factory.mktemp("capture")
    store = CaptureStore(CaptureSettings(directory, max_bytes=5000, max_files=max_files))
    for i, size in enumerate(sizes):
        store.save(b"\x89PNG\r\n\x1a\n" + bytes(size), json.dumps({"i": i}))
        on_disk = list(directory.iterdir())
        assert sum(p.stat().st_size for p in on_disk) <= 5000
        assert len(on_disk) <= max_files
        assert all(re.fullmatch(r"\d{10}\.(png|json)", p.name) for p in on_disk)
    assert store.saved + store.refused == len(sizes)


def test_capture_keeps_the_newest_refuses_oversize_and_resumes(tmp_path):
    settings_ = CaptureSettings(tmp_path, max_bytes=1000, max_files=4)
    (tmp_path / "notes.txt").write_text("not ours")
    store = CaptureStore(settings_)
    for i in range(3):
        store.save(b"\xff\xd8\xff" + bytes(100), json.dumps({"i": i}))
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["0000000002.json", "0000000003.json"]
    assert store.evicted == 1
    assert store.save(bytes(2000), "{}") is None and store.refused == 1
    again = CaptureStore(settings_)  # a restart continues the sequence and the accounting
    assert again.files == 4 and again.bytes_used == store.bytes_used
    assert again.save(b"GIF89a", "{}")[0].name == "0000000004.gif"
    assert (tmp_path / "notes.txt").read_text() == "not ours"
    assert [image_extension(d) for d in (b"RIFF....WEBPVP8", b"BM..", b"II*\x00", b"??")] == \
        ["webp", "bmp", "tif", "bin"]


# --------------------------------------------------------------------------- statistics
def test_monitor_statistics_and_metrics(tmp_path):
    double = TritonDouble()
    with double.installed():
        metrics = TritonMetrics(double.module)
        monitor = Monitor(["background", "cat", "dog"],
                          MonitorSettings(capture=CaptureSettings(tmp_path)), metrics)
        monitor.record(Event.from_arrays(event_inputs(
            [Reason.SAMPLED], {**answer(2), "classes": np.array([1, 2], np.int64)}, 40.0, None)))
        monitor.record(Event.from_arrays(event_inputs(
            [Reason.NO_DETECTIONS], answer(0), 700.0, b"\xff\xd8\xffjpeg")))
        monitor.drop()
    stats = monitor.snapshot()
    assert stats["events"] == 2 and stats["dropped"] == 1
    assert stats["reasons"] == {"sampled": 1, "no_detections": 1}
    assert stats["detections_per_class"] == {"cat": 1, "dog": 1}
    assert sum(stats["score_histogram"]["counts"]) == 2
    assert stats["detections_per_request"]["counts"][:3] == [1, 0, 1]
    assert stats["latency_ms"]["count"] == 2 and stats["latency_ms"]["max"] == 700.0
    assert stats["capture"]["saved"] == 1 and stats["capture"]["files"] == 2
    json.dumps(stats)
    assert double.metric("monitoring_events_total", reason="sampled") == 1
    assert double.metric("monitoring_events_total", reason="no_detections") == 1
    assert double.metric("monitoring_detections_total", class_name="dog") == 1
    assert double.metric("monitoring_detection_score") == 2  # observations
    assert double.metric("monitoring_detections_per_request") == 2
    assert double.metric("monitoring_dropped_total") == 1
    assert double.metric("monitoring_captured_total") == 1
    assert double.metric("monitoring_capture_bytes") == stats["capture"]["bytes"]


# --------------------------------------------------------------------------- streams
class GoneSender(ResponseSender):
    def send(self, response=None, flags=0):
        raise TritonError("stream closed by the client")


def test_subscribers_get_alerts_then_an_end():
    double = TritonDouble()
    now = [0.0]
    subs = Subscribers(double.module, clock=lambda: now[0])
    two, timed, gone = ResponseSender(), ResponseSender(), ResponseSender()
    subs.add(two, Subscription(max_alerts=2))
    subs.add(timed, Subscription(duration_s=5))
    subs.add(gone, Subscription())
    gone.send = GoneSender().send
    for i in range(3):
        subs.publish({"type": "alert", "kind": f"k{i}"})
    messages = [json.loads(r.output_tensors()[0].as_numpy()[0]) for r in two.responses]
    assert [m["type"] for m in messages] == ["subscribed", "alert", "alert", "end"]
    assert two.closed and not timed.closed and len(subs) == 1
    now[0] = 6
    subs.expire()
    assert timed.closed and len(subs) == 0
    assert json.loads(timed.responses[-1].output_tensors()[0].as_numpy()[0]) == \
        {"type": "end", "reason": "duration_s elapsed"}
    with pytest.raises(ValueError, match="parameter 'max_alert"):
        Subscription.from_parameters({"max_alert": 3})


# --------------------------------------------------------------------------- model.py
def with_parameters(config: dict, **values) -> dict:
    config = json.loads(json.dumps(config))
    for key, value in values.items():
        config.setdefault("parameters", {})[key] = {"string_value": value}
    return config


@pytest.fixture
def monitored(torchscript, exported):
    """pipeline_bls (every request monitored) with mask_rcnn routed to the TorchScript
    file and monitoring to a recording callable (or absent, or raising)."""
    events = []
    behaviour = {"raise": False}

    def monitoring(inputs, _params):
        if behaviour["raise"]:
            raise RuntimeError("monitoring is broken")
        events.append(inputs)
        return {MONITORING_OUTPUT.name: np.zeros(0, dtype=object)}

    double = TritonDouble({MODEL_NAME: lambda inputs, _: torchscript(inputs[MODEL_INPUT.name]),
                           MONITORING_NAME: monitoring})
    config = with_parameters(model_config_dict(exported.repository / PIPELINE_NAME / "config.pbtxt"),
                             **{POLICY_PARAMETER: '{"sample_rate": 1.0, "capture": "all"}'})
    with double.installed():
        model = double.load_model(exported.repository / PIPELINE_NAME, config)
        yield double, model, events, behaviour
        model.finalize()


def send(double, model, data):
    request = double.request({PIPELINE_INPUT.name: np.array([[data]], dtype=object)},
                             {"score_threshold": 0.0})
    [response] = double.execute(model, [request])
    assert not response.has_error(), response.error().message()
    return {t.name(): t.as_numpy()[0] for t in response.output_tensors()}


def test_pipeline_sends_events_and_answers_the_same_without_monitoring(monitored, images):
    double, model, events, behaviour = monitored
    data = images["scene.jpg"]
    first = send(double, model, data)
    assert len(events) == 1 and double.metric("pipeline_monitoring_calls_total", outcome="ok") == 1
    event = events[0]
    assert event["reasons"].tolist() == [b"sampled"]
    np.testing.assert_array_equal(event["scores"], first["scores"])
    np.testing.assert_array_equal(event["classes"], first["classes"])
    assert event["image"].tolist() == [data]
    assert json.loads(event["predictions"][0])["masks_rle"] == [m.decode() for m in first["masks_rle"]]

    behaviour["raise"] = True
    broken = send(double, model, data)
    del double.models[MONITORING_NAME]
    unloaded = send(double, model, data)
    for other in (broken, unloaded):
        for name in first:
            np.testing.assert_array_equal(other[name], first[name])
    assert double.metric("pipeline_monitoring_calls_total", outcome="failed") == 2


def test_pipeline_drops_events_beyond_max_in_flight(monitored, images):
    double, model, events, _ = monitored
    model.in_flight.update(object() for _ in range(model.policy.max_in_flight))
    send(double, model, images["scene.jpg"])
    assert events == []
    assert double.metric("pipeline_monitoring_calls_total", outcome="dropped") == 1


@pytest.fixture
def monitoring_model(exported, tmp_path):
    double = TritonDouble()
    config = with_parameters(
        model_config_dict(exported.repository / MONITORING_NAME / "config.pbtxt"),
        drift_reference_size="5", drift_window_size="5", drift_check_every="5",
        capture_dir=str(tmp_path / "capture"))
    with double.installed():
        model = double.load_model(exported.repository / MONITORING_NAME, config)
        yield double, model
        model.finalize()


def command(double, text, parameters=None):
    return double.request({"command": np.array([text.encode()], dtype=object)}, parameters)


def messages(request):
    return [json.loads(r.output_tensors()[0].as_numpy()[0]) if not r.has_error()
            else r.error().message() for r in request.sender.responses]


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_monitoring_acknowledges_counts_alerts_and_captures(monitoring_model, tmp_path):
    double, model = monitoring_model
    subscribe = command(double, "subscribe", {"max_alerts": 1})
    assert double.execute(model, [subscribe]) is None
    assert messages(subscribe)[0]["type"] == "subscribed" and not subscribe.sender.closed
    steady = event_inputs([Reason.SAMPLED], answer(2), 30.0, None)
    shifted = event_inputs([Reason.LOW_SCORE], {**answer(30), "scores": np.full(30, 0.05, np.float32)},
                           30.0, b"\xff\xd8\xffjpeg")
    requests = [double.request(steady) for _ in range(5)] + [double.request(shifted) for _ in range(5)]
    double.execute(model, requests)
    for r in requests:  # acknowledged at once: FINAL, no data
        assert r.sender.closed and r.sender.responses == []
    wait_for(lambda: model.monitor.events == 10 and subscribe.sender.closed)
    alert, end = messages(subscribe)[1:]
    assert alert["type"] == "alert" and alert["kind"] in ("drift_scores", "drift_detections")
    assert alert["psi"] > alert["threshold"] and end == {"type": "end", "reason": "max_alerts reached"}
    stats = command(double, "stats")
    double.execute(model, [stats])
    [snapshot] = messages(stats)
    assert snapshot["events"] == 10 and snapshot["reasons"] == {"sampled": 5, "low_score": 5}
    assert snapshot["capture"]["saved"] == 5 and len(list((tmp_path / "capture").iterdir())) == 10
    assert double.metric("monitoring_alerts_total", kind=alert["kind"]) == 1


def test_monitoring_refuses_bad_commands_and_events(monitoring_model):
    double, model = monitoring_model
    bad = command(double, "explode")
    missing = double.request({"reasons": np.array([b"sampled"], dtype=object)})
    double.execute(model, [bad, missing])
    assert bad.sender.closed and missing.sender.closed
    assert "monitoring: input 'command': must be 'stats', 'subscribe' or 'reset_reference'" \
        in messages(bad)[0]
    assert "monitoring: input 'scores': is missing" in messages(missing)[0]
    assert bad.sender.responses[0].error().code() == TritonError.INVALID_ARG
