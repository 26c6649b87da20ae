"""A pipeline_bls stub that dies (SIGKILL, as by the OOM killer), against the real server:
the requests it held are answered within seconds, the watchdog reloads the model in place
(no NOT_FOUND), `python -m client infer` retries through it, the dead stub's shared memory
is removed, the stop is not held; and the health probe (client/probe.py) sees a dead stub
where Triton's own endpoints do not.

mask_rcnn is the stand-in (export/standin.py) answering after 2 s, so that requests are
in flight, deterministically, when the stub is killed."""

import io
import os
import queue
import signal
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bls.contract.tensors import PIPELINE_INPUT, PIPELINE_NAME
from client import cli
from client.probe import probe
from export import standin
from export.samples import encode, scene
from server.launcher import TritonServer
from server.processes import shm_regions, stub_regions, stubs

pytestmark = pytest.mark.server
LATENCY_MS = 2000


@pytest.fixture(scope="module")
def standin_repository(tmp_path_factory):
    return standin.make_repository(tmp_path_factory.mktemp("stub-death") / "repository",
                                   LATENCY_MS, 5, 28, 64, 96)


@pytest.fixture(scope="module")
def image() -> bytes:
    return encode(scene(60, 80, seed=1), ".jpg")


def send(server, data: bytes, answers: queue.Queue, key: str, protocol: str) -> None:
    """One request in its own thread; (key, seconds, status or 'ok', message) when answered."""
    def run():
        start = time.monotonic()
        module = grpcclient if protocol == "grpc" else httpclient
        url = server.grpc_url if protocol == "grpc" else server.http_url
        client = module.InferenceServerClient(url, **({} if protocol == "grpc" else {
            "network_timeout": 60.0, "connection_timeout": 60.0}))
        tensor = module.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        try:
            client.infer(PIPELINE_NAME, [tensor], **({"client_timeout": 60} if protocol == "grpc"
                                                      else {}))
            answers.put((key, time.monotonic(), "ok", ""))
        except Exception as e:
            answers.put((key, time.monotonic(), str(getattr(e, "status", lambda: "")()),
                         getattr(e, "message", lambda: str(e))()))
        finally:
            client.close()

    threading.Thread(target=run, daemon=True).start()


def kill_pipeline_stubs(server) -> list[int]:
    pids = sorted(stubs(server.tritonserver_pid)[PIPELINE_NAME])
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def test_a_dead_stub_answers_its_requests_fast_reloads_without_a_gap_and_leaks_nothing(
        standin_repository, image, tmp_path):
    (tmp_path / "scene.jpg").write_bytes(image)
    server = TritonServer(standin_repository).start()  # run_triton.sh's default: watchdog on
    try:
        regions_before = {p.name for p in shm_regions(server.pid)}
        for round_ in (1, 2):  # twice: a second reload must be one too
            answers: queue.Queue = queue.Queue()
            for i in range(6):  # held by the stubs: mask_rcnn answers one per 2 s
                send(server, image, answers, f"in flight {i}", ("grpc", "http")[i % 2])
            time.sleep(0.5)
            alive = stubs(server.tritonserver_pid)[PIPELINE_NAME]
            dead_regions = set(stub_regions(alive).values())
            kill_pipeline_stubs(server)
            killed = time.monotonic()
            for i in range(8):  # arriving during the reload
                send(server, image, answers, f"during reload {i}", "grpc")
                time.sleep(0.25)
            printed = io.StringIO()
            with redirect_stdout(printed):  # retries through the reload, by default
                status = cli.main(["infer", str(tmp_path / "scene.jpg"), "--url",
                                   server.grpc_url, "--no-overlay", "--out", str(tmp_path / "out")])
            assert status == 0, printed.getvalue()
            got = [answers.get(timeout=60) for _ in range(14)]
            held = [g for g in got if g[0].startswith("in flight")]
            for key, at, status_, message in held:  # each within 5 s of the kill, retryable
                assert at - killed < 5, (round_, key, at - killed, status_, message)
                assert status_ == "ok" or ("is not healthy" in message
                                           and status_ in ("StatusCode.INTERNAL", "500")), got
            assert not [g for g in got if "NOT_FOUND" in g[2] or "unknown model" in g[3]], got
            now = stubs(server.tritonserver_pid)[PIPELINE_NAME]
            assert len(now) == 2 and not now & alive, (round_, alive, now)  # new stubs
            assert server.log_text().count("model 'pipeline_bls' reloaded in") == round_
            regions_after = {p.name for p in shm_regions(server.pid)}
            assert len(regions_after) == len(regions_before), (regions_before, regions_after)
            assert len(dead_regions) == 2 and not dead_regions & regions_after
    finally:
        started = time.monotonic()
        server.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < 15, f"the stop took {stopped_in:.1f} s (Triton's exit timeout is 30 s)"


def test_the_probe_passes_when_healthy_and_fails_once_a_stub_is_dead(standin_repository):
    """Watchdog off, as a container without it: Triton's health endpoints stay green."""
    with TritonServer(standin_repository, extra_args=("--watchdog", "off")) as server:
        ok, line = probe(server.http_url, 5)
        assert ok, line
        [pid, _] = sorted(stubs(server.tritonserver_pid)[PIPELINE_NAME])
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(0.3)
        with httpclient.InferenceServerClient(server.http_url) as client:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready(PIPELINE_NAME)  # what liveness checked before
        verdicts = [probe(server.http_url, 5) for _ in range(3)]
        assert time.monotonic() - killed < 30
        assert not any(ok for ok, _ in verdicts), verdicts
        assert all(("1 of 2 pipeline_bls stub processes are dead" in line
                    or "is not healthy" in line) for _, line in verdicts), verdicts
        # Without the watchdog the dead instance keeps pipeline_bls from unloading, and a
        # graceful stop waits out Triton's 30 s exit timeout: not what this test is about.
        server.stop(timeout=3)
