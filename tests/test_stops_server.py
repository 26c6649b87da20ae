"""Drained stops on the real embedded server: pipeline_bls unloaded, reloaded, and the
server stopped by SIGTERM, each with requests in flight. Every request gets its answer or
an explicit UNAVAILABLE; none is left to its client's deadline. What every client saw,
and how long the stop took, is printed (docs/reliability.md)."""

import json
import os
import queue
import threading
import time
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bls.contract.tensors import MODEL_NAME, PIPELINE_INPUT, PIPELINE_NAME
from server.launcher import TritonServer
from server.processes import live_members, shm_regions

pytestmark = pytest.mark.server

IN_FLIGHT = 16  # about 2 s of work for the test model's one instance
CLIENT_TIMEOUT_S = 150  # far beyond any stop here: reaching it means a request was left


class Burst:
    """IN_FLIGHT requests sent at once over gRPC; ``ended()`` waits for every outcome."""

    def __init__(self, server, data: bytes, count: int = IN_FLIGHT):
        self.started = time.monotonic()
        self.outcomes: queue.Queue = queue.Queue()
        self.count = count
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        for i in range(count):
            tensor = grpcclient.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
            tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            self.client.async_infer(
                PIPELINE_NAME, [tensor], client_timeout=CLIENT_TIMEOUT_S,
                callback=lambda result, error, i=i: self.outcomes.put(
                    (i, time.monotonic() - self.started, result, error)))

    def ended(self) -> list[tuple[int, float, object, object]]:
        try:
            return sorted(self.outcomes.get(timeout=CLIENT_TIMEOUT_S + 30)
                          for _ in range(self.count))
        finally:
            self.client.close()


def summarise(ended) -> Counter:
    """'answered' or '<status>: <message>' per request."""
    return Counter("answered" if error is None else f"{error.status()}: {error.message()}"
                   for _, _, _, error in ended)


def assert_answered_or_unavailable(ended) -> None:
    for i, at, result, error in ended:
        if error is not None:
            assert error.status() == "StatusCode.UNAVAILABLE", (i, str(error))
            assert at < CLIENT_TIMEOUT_S - 10, f"request {i} waited for its deadline: {error}"


def wait_unloaded(admin, model: str, timeout: float = 120) -> float:
    """When the repository index stops listing ``model`` as READY (its last request
    answered, its instances finalized)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {m["name"]: m.get("state") for m in admin.get_model_repository_index()}
        if states.get(model) not in ("READY", "UNLOADING"):
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{model} still loaded after {timeout} s")


@pytest.fixture
def explicit(exported, tmp_path):
    with TritonServer(exported.repository, log=tmp_path / "server.log",
                      extra_args=("--model-control-mode", "explicit")) as server, \
            httpclient.InferenceServerClient(server.http_url,
                                             network_timeout=CLIENT_TIMEOUT_S) as admin:
        for model in (MODEL_NAME, PIPELINE_NAME):
            admin.load_model(model)
        yield server, admin


def test_unload_and_reload_answer_every_request_in_flight(explicit, images):
    server, admin = explicit
    data = images["scene.jpg"]
    burst = Burst(server, data)
    time.sleep(0.3)  # in execute, in mask_rcnn, in Triton's queue
    start = time.monotonic()
    admin.unload_model(PIPELINE_NAME)  # returns at once; the unload waits for its requests
    unloaded_in = wait_unloaded(admin, PIPELINE_NAME) - start
    ended = burst.ended()
    assert_answered_or_unavailable(ended)
    print(f"unload with {IN_FLIGHT} in flight: unloaded in {unloaded_in:.1f} s; "
          f"clients saw {dict(summarise(ended))}; last ended at {ended[-1][1]:.1f} s")

    admin.load_model(PIPELINE_NAME)
    config = admin.get_model_config(PIPELINE_NAME)
    config["parameters"]["worker_threads"] = {"string_value": "3"}  # a changed config: a reload
    burst = Burst(server, data)
    time.sleep(0.3)
    start = time.monotonic()
    admin.load_model(PIPELINE_NAME, config=json.dumps(config))
    reloaded_in = time.monotonic() - start
    ended = burst.ended()
    assert_answered_or_unavailable(ended)
    assert admin.is_model_ready(PIPELINE_NAME)
    print(f"reload with {IN_FLIGHT} in flight: reloaded in {reloaded_in:.1f} s; "
          f"clients saw {dict(summarise(ended))}; last ended at {ended[-1][1]:.1f} s")


def test_sigterm_answers_or_refuses_every_request_in_flight(exported, images, tmp_path):
    server = TritonServer(exported.repository, log=tmp_path / "server.log").start()
    pgid = os.getpgid(server.pid)
    try:
        burst = Burst(server, images["scene.jpg"], count=24)
        time.sleep(0.5)  # some are executing, the rest queued
        start = time.monotonic()
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        ended = burst.ended()
        stopper.join()
        stopped_in = time.monotonic() - start
    finally:
        server.stop()
    assert_answered_or_unavailable(ended)
    counts = summarise(ended)
    assert sum(counts.values()) == 24
    assert not any("INTERNAL" in k for k in counts), counts
    assert stopped_in < 60, stopped_in
    assert live_members(pgid) == []
    assert not shm_regions(pgid), "shared memory left behind"
    print(f"SIGTERM with 24 in flight: server gone in {stopped_in:.1f} s; clients saw "
          f"{dict(counts)}; last ended at {ended[-1][1]:.1f} s")
