"""Monitoring logic without a server: the policy, the drift math, the capture quota, the
event checks, the queue, the statistics and metrics (bounded labels, snapshots taken
while the worker records), the alert streams and their cap, and the monitoring model.py
through the triton_python_backend_utils double. The real server runs them in
test_monitoring_server.py and test_monitoring_hygiene_server.py."""

import json
import re
import threading
import time
from contextlib import ExitStack

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bls.monitoring.service
from bls.contract.parameters import MAX_DETECTIONS_LIMIT, MONITORING_PARAMETERS
from bls.contract.tensors import MONITORING_INPUTS, MONITORING_NAME
from bls.errors import Unavailable
from bls.monitoring.aggregate import Monitor, MonitorSettings
from bls.monitoring.capture import CaptureSettings, CaptureStore, image_extension
from bls.monitoring.drift import DriftMonitor, DriftSettings, psi, shares
from bls.monitoring.event import Event, event_inputs, predictions_json
from bls.monitoring.metrics import MAX_LABEL_VALUES, OTHER, TritonMetrics
from bls.monitoring.policy import POLICY_PARAMETER, Capture, MonitoringPolicy, Reason
from bls.monitoring.queue import EventQueue
from bls.monitoring.subscriptions import Subscribers, Subscription
from bls.testing import InferenceResponseSender, TritonDouble, TritonError, model_config_dict

DEFAULTS = MONITORING_PARAMETERS.read({})
NAMES = ["background", "cat", "dog"]


def with_parameters(config: dict, **values) -> dict:
    config = json.loads(json.dumps(config))
    for key, value in values.items():
        config.setdefault("parameters", {})[key] = {"string_value": str(value)}
    return config


def monitor_settings(**values) -> MonitorSettings:
    """MonitorSettings from config parameters, through the registry."""
    return MonitorSettings.from_config(with_parameters({}, **values))


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
    ('{"sample_rate": 2}', "field 'sample_rate': must be in [0, 1], got 2"),
    ('{"sample_rat": 0.1}', "field 'sample_rat': is not a known monitoring_policy field"),
    ('{"capture": "some"}', "field 'capture': must be one of ['none', 'flagged', 'all'], got 'some'"),
    ('{"watched_classes": "dog"}', "field 'watched_classes': must be a list of names"),
    ('{"max_pending_events": 0}', "field 'max_pending_events': must be >= 1, got 0"),
    ('{"no_detections": 1}', "field 'no_detections': must be true or false, got 1"),
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
    event = Event.from_arrays(captured, len(NAMES), DEFAULTS["max_event_bytes"])
    assert event.reasons == ("slow",) and event.latency_ms == 12.5
    assert json.loads(event.predictions) == json.loads(predictions_json(answer()))



# --------------------------------------------------------------------------- events
def parse(arrays, max_event_bytes=DEFAULTS["max_event_bytes"]):
    return Event.from_arrays(arrays, len(NAMES), max_event_bytes)


def test_event_errors_name_the_input():
    good = event_inputs([Reason.SAMPLED], answer(), 1.0, None)
    with pytest.raises(ValueError, match="input 'scores': is missing"):
        parse({**good, "scores": None})
    with pytest.raises(ValueError, match="input 'classes': has 1 values for 2 scores"):
        parse({**good, "classes": np.array([1], np.int64)})
    with pytest.raises(ValueError, match="input 'latency_ms'"):
        parse({**good, "latency_ms": np.array([np.nan], np.float32)})


def detections(scores, classes) -> dict:
    return event_inputs([Reason.SAMPLED], {**answer(len(scores)),
                                           "scores": np.array(scores, np.float32),
                                           "classes": np.array(classes, np.int64)}, 1.0, None)


REASON_LIST = str([r.value for r in Reason])


@pytest.mark.parametrize("arrays,message", [
    ({**detections([0.9], [1]), "reasons": np.array([b"made_up"], dtype=object)},
     f"input 'reasons': 'made_up' is not a reason; known: {REASON_LIST}"),
    ({**detections([0.9], [1]), "reasons": np.array([b"sampled", b"x" * 10_000], dtype=object)},
     f"input 'reasons': '{'x' * 64}'... is not a reason"),
    ({**detections([0.9], [1]), "reasons": np.zeros(0, dtype=object)},
     f"input 'reasons': is empty; an event has one or more of {REASON_LIST}"),
    (detections([0.9, 0.8], [1, len(NAMES)]),
     f"input 'classes': class index {len(NAMES)} (detection 1) is outside [0, {len(NAMES)})"),
    (detections([0.9], [-1]), "input 'classes': class index -1 (detection 0) is outside"),
    (detections([0.9, np.nan], [1, 1]), "input 'scores': score nan (detection 1) is not in [0, 1]"),
    (detections([np.inf], [1]), "input 'scores': score inf (detection 0) is not in [0, 1]"),
    (detections([1.5], [1]), "input 'scores': score 1.5 (detection 0) is not in [0, 1]"),
    (detections([-0.25], [1]), "input 'scores': score -0.25 (detection 0) is not in [0, 1]"),
    (detections([0.5] * (MAX_DETECTIONS_LIMIT + 1), [1] * (MAX_DETECTIONS_LIMIT + 1)),
     f"input 'scores': has {MAX_DETECTIONS_LIMIT + 1} detections, more than "
     f"{MAX_DETECTIONS_LIMIT}"),
])
def test_events_outside_the_known_sets_are_refused(arrays, message):
    with pytest.raises(ValueError) as info:
        parse(arrays)
    assert message in str(info.value)
    assert len(str(info.value)) < 300  # no request echoed whole


def test_event_size_counts_every_input_and_is_bounded():
    arrays = event_inputs([Reason.SAMPLED], answer(2), 1.0, b"\xff\xd8\xff" + bytes(1000))
    size = sum(v.nbytes for k, v in arrays.items() if v.dtype != object) + \
        sum(len(b) for k, v in arrays.items() if v.dtype == object for b in v)
    assert size > 1000 + len(arrays["predictions"][0])
    assert parse(arrays, max_event_bytes=size).nbytes == size  # at the bound: accepted
    with pytest.raises(ValueError) as info:
        parse(arrays, max_event_bytes=size - 1)
    assert str(info.value) == (f"input 'image': the event is {size} bytes (image: 1003), more "
                               f"than the limit (max_event_bytes) of {size - 1}")


def test_settings_are_read_through_the_registry(tmp_path):
    read = monitor_settings()
    assert (read.queue_size, read.queue_max_bytes, read.max_event_bytes, read.max_subscriptions) \
        == (DEFAULTS["queue_size"], DEFAULTS["queue_max_bytes"], DEFAULTS["max_event_bytes"],
            DEFAULTS["max_subscriptions"])
    assert read.drift == DriftSettings(DEFAULTS["drift_reference_size"],
                                       DEFAULTS["drift_window_size"],
                                       DEFAULTS["drift_check_every"], DEFAULTS["drift_threshold"])
    assert read.capture is None
    chosen = monitor_settings(queue_size=7, queue_max_bytes=900, max_event_bytes=800,
                              max_subscriptions=3, drift_threshold=0.5, capture_dir=tmp_path,
                              capture_max_files=5)
    assert (chosen.queue_size, chosen.queue_max_bytes, chosen.max_event_bytes,
            chosen.max_subscriptions, chosen.drift.threshold) == (7, 900, 800, 3, 0.5)
    assert chosen.capture == CaptureSettings(tmp_path, DEFAULTS["capture_max_bytes"], 5)
    with pytest.raises(ValueError, match=r"config parameter 'queue_sise': is not a known config parameter"):
        monitor_settings(queue_sise=5)
    with pytest.raises(ValueError, match="max_event_bytes=800 must be <= queue_max_bytes=700"):
        monitor_settings(queue_max_bytes=700, max_event_bytes=800)


def test_event_queue_is_bounded_by_count_and_bytes():
    q = EventQueue(max_items=3, max_bytes=100)
    assert q.put("a", 60) and q.put("b", 40)
    assert not q.put("c", 1)  # 101 bytes
    assert q.put("d", 0) and not q.put("e", 0)  # 4 items
    assert q.usage() == (3, 100)
    assert q.get(0) == "a" and q.put("f", 60) and q.usage() == (3, 100)
    room = threading.Timer(0.2, q.get, args=(0,))
    room.start()
    assert q.put("g", 0, timeout=5)  # waits until the timer takes "b"
    q.close()
    assert not q.put("h", 0)
    assert [q.get(0), q.get(0), q.get(0), q.get(5)] == ["d", "f", "g", None]  # drained, then None


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
        metrics = TritonMetrics(double.module, NAMES)
        monitor = Monitor(NAMES, monitor_settings(capture_dir=tmp_path), metrics)
        monitor.record(monitor.parse(event_inputs(
            [Reason.SAMPLED], {**answer(2), "classes": np.array([1, 2], np.int64)}, 40.0, None)))
        monitor.record(monitor.parse(event_inputs(
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


def series(double, family) -> dict:
    """label value -> metric value, for a family with one label."""
    return {dict(key).popitem()[1]: m.value() for key, m in double.metrics[family].metrics.items()}


def test_metric_labels_come_only_from_fixed_sets():
    double = TritonDouble()
    with double.installed():
        metrics = TritonMetrics(double.module, NAMES)
        forged = Event(("sampled", "made_up"), np.array([0.5, 0.5], np.float32),
                       np.array([1, 1], np.int64), 1.0, 0)
        metrics.event(forged, ["cat", "class_99"], {"scores": 0.1, "made_up": 0.2},
                      [{"kind": DriftMonitor.ALERT_KINDS[0]}, {"kind": "made_up"}])
    assert series(double, "monitoring_events_total") == {"sampled": 1, OTHER: 1}
    assert series(double, "monitoring_detections_total") == {"cat": 1, OTHER: 1}
    assert series(double, "monitoring_drift_psi") == {"scores": 0.1, OTHER: 0.2}
    assert series(double, "monitoring_alerts_total") == {DriftMonitor.ALERT_KINDS[0]: 1, OTHER: 1}


def test_metric_label_values_are_capped_per_family():
    names = [f"class{i}" for i in range(MAX_LABEL_VALUES + 40)]
    double = TritonDouble()
    with double.installed():
        monitor = Monitor(names, monitor_settings(), TritonMetrics(double.module, names))
        for i in range(len(names)):
            monitor.record(monitor.parse(detections([0.5, 0.5], [i, i])))
    counted = series(double, "monitoring_detections_total")
    assert len(counted) == MAX_LABEL_VALUES + 1
    assert counted[OTHER] == 2 * (len(names) - MAX_LABEL_VALUES)
    assert sum(counted.values()) == 2 * len(names)  # nothing lost, only folded
    assert monitor.snapshot()["detections_per_class"][names[-1]] == 2  # stats keep every name


def test_snapshot_is_consistent_while_the_worker_records(tmp_path):
    reference, window = 5, 5
    settings_ = monitor_settings(drift_reference_size=reference, drift_window_size=window,
                                 drift_check_every=1, capture_dir=tmp_path,
                                 capture_max_files=20)
    double = TritonDouble()
    rng = np.random.default_rng(0)
    count = 400
    events = [detections(rng.uniform(0, 1, n).tolist(), rng.integers(0, len(NAMES), n).tolist())
              for n in rng.integers(0, 12, count)]
    with double.installed():
        monitor = Monitor(NAMES, settings_, TritonMetrics(double.module, NAMES))
        parsed = [monitor.parse({**e, "image": np.array([b"\xff\xd8\xff" + bytes(50)], object),
                                 "predictions": np.array([b"{}"], object)}) for e in events]
        failures = []

        def work():
            try:
                for event in parsed:
                    monitor.record(event)
            except Exception as e:  # reported below: the main thread asserts
                failures.append(e)

        worker = threading.Thread(target=work)
        worker.start()
        seen = []
        while worker.is_alive() or not seen or seen[-1]["events"] < count:
            stats = monitor.snapshot()
            json.dumps(stats)
            scored = sum(stats["score_histogram"]["counts"])
            assert scored == sum(stats["detections_per_class"].values())
            assert scored == sum(len(e.scores) for e in parsed[:stats["events"]])
            assert sum(stats["detections_per_request"]["counts"]) == stats["events"]
            assert sum(stats["reasons"].values()) == stats["events"] == \
                stats["latency_ms"]["count"]
            assert bool(stats["drift_psi"]) == (stats["events"] >= reference + window)
            assert stats["events"] - 1 <= stats["capture"]["saved"] <= stats["events"]
            seen.append(stats)
            assert not failures, failures
        worker.join()
    assert [s["events"] for s in seen] == sorted(s["events"] for s in seen)
    assert len({s["events"] for s in seen}) > 10, "the snapshots never met the worker"
    assert double.metric("monitoring_detection_score") == sum(len(e.scores) for e in parsed)


# --------------------------------------------------------------------------- streams
class GoneSender(InferenceResponseSender):
    def send(self, response=None, flags=0):
        raise TritonError("stream closed by the client")


def text_of(response) -> dict:
    return json.loads(response.output_tensors()[0].as_numpy()[0])


def test_subscribers_get_alerts_then_an_end():
    double = TritonDouble()
    now = [0.0]
    subs = Subscribers(double.module, max_open=3, clock=lambda: now[0])
    two, timed, gone = InferenceResponseSender(), InferenceResponseSender(), InferenceResponseSender()
    subs.add(two, Subscription(max_alerts=2))
    subs.add(timed, Subscription(duration_s=5))
    subs.add(gone, Subscription())
    gone.send = GoneSender().send
    for i in range(3):
        subs.publish({"type": "alert", "kind": f"k{i}"})
    assert [text_of(r)["type"] for r in two.responses] == ["subscribed", "alert", "alert", "end"]
    assert two.closed and not timed.closed and len(subs) == 1
    now[0] = 6
    subs.expire()
    assert timed.closed and len(subs) == 0
    assert text_of(timed.responses[-1]) == {"type": "end", "reason": "duration_s elapsed"}
    with pytest.raises(ValueError, match="parameter 'max_alert"):
        Subscription.from_parameters({"max_alert": 3})


def test_subscriptions_are_capped_and_ended_streams_free_their_slot():
    double = TritonDouble()
    subs = Subscribers(double.module, max_open=2)
    first, cancelled = double.request({}), double.request({})
    subs.add(first.sender, Subscription(max_alerts=1))
    subs.add(cancelled.sender, Subscription())
    refused = InferenceResponseSender()
    with pytest.raises(Unavailable, match=r"^2 alert streams are open, the limit "
                                          r"\(max_subscriptions\) is 2; "):
        subs.add(refused, Subscription())
    assert refused.responses == [] and len(subs) == 2
    subs.publish({"type": "alert"})  # first has had its one alert: ended
    assert first.sender.closed and len(subs) == 1
    subs.add(InferenceResponseSender(), Subscription())
    double.cancel(cancelled)  # its client went away
    subs.expire()
    assert cancelled.sender.closed and len(subs) == 1
    subs.add(InferenceResponseSender(), Subscription())
    assert len(subs) == 2
    subs.close_all("unloaded")
    assert len(subs) == 0


# --------------------------------------------------------------------------- model.py
@pytest.fixture
def load_monitoring(exported):
    """load(**parameters) -> (double, model): the monitoring model.py with those config
    parameters, its double installed until the test ends; finalized then."""
    with ExitStack() as stack:
        loaded = []

        def load(**parameters):
            double = stack.enter_context(TritonDouble().installed())
            config = with_parameters(
                model_config_dict(exported.repository / MONITORING_NAME / "config.pbtxt"),
                **parameters)
            loaded.append(double.load_model(exported.repository / MONITORING_NAME, config))
            return double, loaded[-1]

        yield load
        for model in loaded:
            model.finalize()


@pytest.fixture
def monitoring_model(load_monitoring, tmp_path):
    return load_monitoring(drift_reference_size=5, drift_window_size=5, drift_check_every=5,
                           capture_dir=tmp_path / "capture")


def command(double, text, parameters=None):
    return double.request({"command": np.array([text.encode()], dtype=object)}, parameters)


def messages(request):
    return [text_of(r) if not r.has_error() else r.error().message()
            for r in request.sender.responses]


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def acknowledged(request) -> bool:
    """The event's answer: the FINAL flag alone, no data."""
    return request.sender.closed and request.sender.responses == []


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
    assert all(acknowledged(r) for r in requests)
    wait_for(lambda: model.handler.monitor.events == 10 and subscribe.sender.closed)
    alert, end = messages(subscribe)[1:]
    assert alert["type"] == "alert" and alert["kind"] in DriftMonitor.ALERT_KINDS
    assert alert["psi"] > alert["threshold"] and end == {"type": "end", "reason": "max_alerts reached"}
    stats = command(double, "stats")
    double.execute(model, [stats])
    [snapshot] = messages(stats)
    assert snapshot["events"] == 10 and snapshot["reasons"] == {"sampled": 5, "low_score": 5}
    assert snapshot["capture"]["saved"] == 5 and len(list((tmp_path / "capture").iterdir())) == 10
    assert snapshot["subscriptions"] == 0 and snapshot["queue"] == {"events": 0, "bytes": 0}
    assert double.metric("monitoring_alerts_total", kind=alert["kind"]) == 1


def test_monitoring_refuses_bad_commands_and_events(monitoring_model, exported):
    double, model = monitoring_model
    class_count = len(exported.meta.class_names)
    bad = command(double, "explode")
    missing = double.request({"reasons": np.array([b"sampled"], dtype=object)})
    reason = double.request({**detections([0.9], [1]),
                             "reasons": np.array([b"made_up"], dtype=object)})
    out_of_range = double.request(detections([0.9], [class_count]))
    huge = double.request(event_inputs([Reason.SAMPLED], answer(1), 1.0,
                                       bytes(model.handler.monitor.settings.max_event_bytes)))
    requests = [bad, missing, reason, out_of_range, huge]
    double.execute(model, requests)
    assert all(r.sender.closed and len(r.sender.responses) == 1 for r in requests)
    assert all(r.sender.responses[0].error().code() == TritonError.INVALID_ARG for r in requests)
    bad_, missing_, reason_, range_, huge_ = (messages(r)[0] for r in requests)
    assert "monitoring: input 'command': must be 'stats', 'subscribe' or 'reset_reference'" in bad_
    assert "monitoring: input 'scores': is missing" in missing_
    assert "monitoring: input 'reasons': 'made_up' is not a reason" in reason_
    assert f"monitoring: input 'classes': class index {class_count} (detection 0) is outside " \
           f"[0, {class_count})" in range_
    assert re.search(r"monitoring: input 'image': the event is \d+ bytes \(image: "
                     rf"{model.handler.monitor.settings.max_event_bytes}\), more than the limit "
                     rf"\(max_event_bytes\) of {model.handler.monitor.settings.max_event_bytes}$", huge_)
    stats = command(double, "stats")
    double.execute(model, [stats])
    assert messages(stats)[0]["events"] == 0
    assert series(double, "monitoring_events_total") == {}
    assert series(double, "monitoring_detections_total") == {}


class Blocked:
    """Holds the worker inside Monitor.record until ``release``, so the queue fills."""

    def __init__(self, model):
        self.entered, self.released = threading.Event(), threading.Event()
        record = model.handler.monitor.record

        def blocking(event):
            self.entered.set()
            self.released.wait(10)
            return record(event)

        model.handler.monitor.record = blocking


@pytest.mark.parametrize("bound", ["count", "bytes"])
def test_monitoring_drops_events_past_either_queue_bound(load_monitoring, bound):
    size = Event.from_arrays(detections([0.9], [1]), len(NAMES), DEFAULTS["max_event_bytes"]).nbytes
    limits = ({"queue_size": 2, "queue_max_bytes": 100 * size} if bound == "count" else
              {"queue_size": 100, "queue_max_bytes": 2 * size + size // 2})
    double, model = load_monitoring(max_event_bytes=size, **limits)
    blocked = Blocked(model)
    first = double.request(detections([0.9], [1]))
    double.execute(model, [first])
    assert blocked.entered.wait(10)  # the worker holds it: the queue is empty again
    waiting = [double.request(detections([0.9], [1])) for _ in range(4)]
    double.execute(model, waiting)
    assert acknowledged(first) and all(acknowledged(r) for r in waiting)  # dropped ones too
    stats = command(double, "stats")
    double.execute(model, [stats])
    [snapshot] = messages(stats)
    assert snapshot["dropped"] == 2 and snapshot["queue"] == {"events": 2, "bytes": 2 * size}
    assert double.metric("monitoring_dropped_total") == 2
    blocked.released.set()
    wait_for(lambda: model.handler.monitor.events == 3)


def test_reset_reference_waits_for_room_then_answers_unavailable(load_monitoring, monkeypatch):
    double, model = load_monitoring(queue_size=1)
    monkeypatch.setattr(bls.monitoring.service, "RESET_WAIT_S", 0.2)  # the wait, shortened
    blocked = Blocked(model)
    double.execute(model, [double.request(detections([0.9], [1]))])
    assert blocked.entered.wait(10)
    double.execute(model, [double.request(detections([0.9], [1]))])  # the queue is full
    reset = command(double, "reset_reference")
    double.execute(model, [reset])
    [error] = reset.sender.responses
    assert reset.sender.closed and error.error().code() == TritonError.UNAVAILABLE
    assert error.error().message() == ("monitoring: reset_reference not queued: the event "
                                       "queue stayed full for 0.2 s; try again")
    blocked.released.set()
    again = command(double, "reset_reference")
    double.execute(model, [again])
    assert messages(again) == [{"type": "reset_reference"}]


def test_monitoring_refuses_a_subscription_past_max_subscriptions(load_monitoring):
    double, model = load_monitoring(max_subscriptions=2)
    limit = model.handler.monitor.settings.max_subscriptions
    streams = [command(double, "subscribe", {"max_alerts": 1}) for _ in range(limit + 1)]
    double.execute(model, streams)
    assert [messages(s)[0]["type"] for s in streams[:limit]] == ["subscribed"] * limit
    refused = streams[limit].sender
    assert refused.closed and len(refused.responses) == 1
    assert refused.responses[0].error().code() == TritonError.UNAVAILABLE
    assert refused.responses[0].error().message().startswith(
        f"monitoring: {limit} alert streams are open, the limit (max_subscriptions) is {limit}; ")
    double.cancel(streams[0])  # its client goes away; the worker notices within 0.5 s
    wait_for(lambda: streams[0].sender.closed)
    again = command(double, "subscribe")
    double.execute(model, [again])
    assert messages(again)[0]["type"] == "subscribed"
