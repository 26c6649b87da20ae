"""The monitoring model's hygiene on the real embedded server: what any client may send it
cannot grow its metrics, its queue or its alert streams without bound.

One server, explicit model control, monitoring alone loaded, small limits: bad events
are refused with INVALID_ARG naming the problem and leave no Prometheus series; a
subscription past max_subscriptions is refused UNAVAILABLE until a stream ends (or its
client goes); 'stats' answers consistently while events stream in. A gRPC stream carries
an error's message, not its code, so the messages are checked here and the codes in
test_monitoring_unit.py.
"""

import json
import queue
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bls.contract.tensors import MONITORING_NAME, MONITORING_OUTPUT
from bls.monitoring.event import event_inputs
from bls.monitoring.policy import Reason
from client.metrics import scrape, value
from export.repository import assemble, parameters_override
from server.launcher import TritonServer
from tests.test_monitoring_server import monitoring_input, send_command

pytestmark = pytest.mark.server

MAX_SUBSCRIPTIONS = 2
MAX_EVENT_BYTES = 4096
QUEUE_MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    repository = assemble(exported.model_file, tmp_path_factory.mktemp("hygiene") / "repository", {
        MONITORING_NAME: parameters_override(max_subscriptions=MAX_SUBSCRIPTIONS,
                                             max_event_bytes=MAX_EVENT_BYTES,
                                             queue_max_bytes=QUEUE_MAX_BYTES),
    })
    with TritonServer(repository, extra_args=("--model-control-mode", "explicit")) as running:
        with httpclient.InferenceServerClient(running.http_url) as client:
            client.load_model(MONITORING_NAME)
        yield running


class Stream:
    """One gRPC stream to monitoring; its answers in arrival order: ("message", JSON),
    ("error", text) or ("acknowledged", None) for an event's empty FINAL response."""

    def __init__(self, server):
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.answers: queue.Queue = queue.Queue()
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result, error):
        if error is not None:
            self.answers.put(("error", error.message()))
        else:
            message = result.as_numpy(MONITORING_OUTPUT.name)
            self.answers.put(("message", json.loads(message[0])) if message is not None
                             else ("acknowledged", None))

    def event(self, reasons=(Reason.SAMPLED.value,), classes=(1,), image=None):
        """An event as pipeline_bls sends it, with any reasons and class indices."""
        n = len(classes)
        answer = {"scores": np.full(n, 0.9, np.float32), "classes": np.array(classes, np.int64),
                  "boxes": np.zeros((n, 4), np.float32), "image_size": np.array([1, 1]),
                  "class_names": np.array([b"x"] * n, dtype=object),
                  "masks_rle": np.array([b""] * n, dtype=object)}
        inputs = {**event_inputs([Reason.SAMPLED], answer, 20.0, image),
                  "reasons": np.array([r.encode() for r in reasons], dtype=object)}
        self.client.async_stream_infer(
            MONITORING_NAME, [monitoring_input(name, array) for name, array in inputs.items()
                              if array.size or name not in ("image", "predictions")],
            enable_empty_final_response=True)

    def command(self, text, parameters=None):
        send_command(self.client, text, parameters)

    def next(self, timeout=30.0):
        return self.answers.get(timeout=timeout)

    def close(self):
        self.client.stop_stream(cancel_requests=True)
        self.client.close()


@pytest.fixture
def stream(server):
    opened = Stream(server)
    yield opened
    opened.close()


def stats(stream):
    stream.command("stats")
    kind, message = stream.next()
    assert kind == "message" and message["type"] == "stats", message
    return message


def test_bad_events_are_refused_and_leave_no_series(server, stream, exported):
    class_count = len(exported.meta.class_names)
    stream.event(reasons=["made_up_reason"])
    stream.event(classes=(class_count,))
    stream.event(image=b"\xff\xd8\xff" + bytes(MAX_EVENT_BYTES))
    errors = sorted(stream.next()[1] for _ in range(3))
    assert "input 'classes': class index" in errors[0] and f"[0, {class_count})" in errors[0]
    assert "input 'image': the event is" in errors[1]
    assert f"limit (max_event_bytes) of {MAX_EVENT_BYTES}" in errors[1]
    assert "input 'reasons': 'made_up_reason' is not a reason" in errors[2]
    assert all(e.startswith(f"{MONITORING_NAME}: ") for e in errors), errors

    before = stats(stream)["events"]
    stream.event(classes=(1,))
    assert stream.next() == ("acknowledged", None)
    deadline = time.monotonic() + 30
    while stats(stream)["events"] == before:
        assert time.monotonic() < deadline, "the good event was never recorded"
        time.sleep(0.2)
    samples = scrape(server.metrics_url)
    assert value(samples, "monitoring_events_total", reason=Reason.SAMPLED.value) >= 1
    assert value(samples, "monitoring_detections_total",
                 class_name=exported.meta.class_names[1]) >= 1
    assert label_values(samples, "monitoring_events_total") <= {r.value for r in Reason}
    assert label_values(samples, "monitoring_detections_total") <= set(exported.meta.class_names)
    assert not any("made_up_reason" in str(key) or f"class_{class_count}" in str(key)
                   for key in samples)


def label_values(samples, name) -> set:
    return {v for (sample, labels) in samples if sample == name for _, v in labels}


def wait_for_subscriptions(stream, count, timeout=10.0):
    """Until 'stats' shows ``count`` open alert streams (a cancelled one is noticed by
    the worker within half a second)."""
    deadline = time.monotonic() + timeout
    while (open_ := stats(stream)["subscriptions"]) != count:
        assert time.monotonic() < deadline, f"{open_} alert streams open, expected {count}"
        time.sleep(0.2)


def test_subscriptions_past_the_limit_are_refused_until_one_ends(server, stream):
    wait_for_subscriptions(stream, 0)  # none left from other tests
    short, long_ = {"duration_s": 2}, {"duration_s": 60}
    stream.command("subscribe", short)
    stream.command("subscribe", long_)
    assert [stream.next()[1]["type"] for _ in range(2)] == ["subscribed", "subscribed"]
    stream.command("subscribe", long_)
    kind, refused = stream.next()
    assert kind == "error" and refused.startswith(
        f"{MONITORING_NAME}: {MAX_SUBSCRIPTIONS} alert streams are open, the limit "
        f"(max_subscriptions) is {MAX_SUBSCRIPTIONS}; "), refused
    assert stream.next(timeout=10) == ("message", {"type": "end", "reason": "duration_s elapsed"})
    stream.command("subscribe", long_)
    assert stream.next()[1]["type"] == "subscribed"
    wait_for_subscriptions(stream, MAX_SUBSCRIPTIONS)


def test_a_client_gone_frees_its_subscription(server, stream):
    wait_for_subscriptions(stream, 0)
    gone = Stream(server)
    try:
        gone.command("subscribe", {"duration_s": 600})
        assert gone.next()[1]["type"] == "subscribed"
        wait_for_subscriptions(stream, 1)
    finally:
        gone.close()  # cancels its requests, as a client that goes away does
    wait_for_subscriptions(stream, 0)


def test_stats_is_consistent_while_events_stream_in(server, stream):
    sender = Stream(server)
    count = 300
    before = stats(stream)

    def send():
        for i in range(count):
            sender.event(classes=(1,) * (i % 4))

    thread = threading.Thread(target=send)
    thread.start()
    seen = []
    try:
        while thread.is_alive() or not seen or \
                seen[-1]["events"] + seen[-1]["dropped"] < before["events"] + before["dropped"] + count:
            snapshot = stats(stream)
            assert sum(snapshot["score_histogram"]["counts"]) == \
                sum(snapshot["detections_per_class"].values())
            assert sum(snapshot["detections_per_request"]["counts"]) == snapshot["events"]
            assert sum(snapshot["reasons"].values()) == snapshot["events"]
            seen.append(snapshot)
            assert len(seen) < 2000, "the events never all arrived"
    finally:
        thread.join()
        sender.close()
    assert [s["events"] for s in seen] == sorted(s["events"] for s in seen)
    assert len({s["events"] for s in seen}) > 2, "no stats answered while events came in"
    last = seen[-1]
    assert last["events"] + last["dropped"] == before["events"] + before["dropped"] + count
