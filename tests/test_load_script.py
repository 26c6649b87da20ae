"""benchmarks/load.py end to end: a tiny export, its own real server, both protocols at
once, every answer checked against the first of its kind, memory read before and after.

A proof that the script works, not a speed test: the figures it prints are not judged
here, only that nothing failed and that it measured what it reports. (The session's
256-384 px export is not reused: on 2 cores its forward takes seconds, a 64 px export
with 3 detections ~0.15 s, so the export pays for itself.)
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from benchmarks import load
from client.results import Detections
from server.processes import live_members


def test_schedule_cycles_every_image_with_every_parameter_set():
    images, sets, dense_every = 3, 4, 7
    jobs = [load.schedule(i, images, sets, dense_every) for i in range(7 * images * sets * 2)]
    dense = [j for j in jobs if j.parameters == sets]
    assert [j.index for j in dense] == list(range(dense_every - 1, len(jobs), dense_every))
    assert {j.image for j in dense} == set(range(images))
    counts = Counter((j.image, j.parameters) for j in jobs if j.parameters < sets)
    assert set(counts) == {(i, s) for i in range(images) for s in range(sets)}
    assert all(j.parameters < sets for j in (load.schedule(i, images, sets, 0)
                                             for i in range(100)))


def _answer(**changes) -> Detections:
    fields = dict(boxes=np.array([[1, 2, 30, 40]], np.float32), scores=np.array([0.9], np.float32),
                  classes=np.array([3], np.int64), class_names=("car",), masks_rle=(b"ab3",),
                  masks=np.zeros((0, 50, 60), np.uint8), image_size=(50, 60),
                  masks_polygon=(), masks_box=np.zeros(0, np.uint8),
                  mask_windows=np.zeros((0, 4), np.int64))
    return Detections(**(fields | changes))


@pytest.mark.parametrize("field, value", [
    ("boxes", np.array([[1, 2, 30, 40.0001]], np.float32)),
    ("scores", np.array([np.nextafter(np.float32(0.9), np.float32(1))], np.float32)),
    ("classes", np.array([4], np.int64)),
    ("class_names", ("bus",)),
    ("masks_rle", (b"ab4",)),
    ("masks", np.zeros((0, 50, 61), np.uint8)),
    ("image_size", (50, 61)),
    ("masks_polygon", (b"[[1,2,3,4,5,6]]",)),
    ("masks_box", np.ones(1, np.uint8)),
    ("mask_windows", np.zeros((1, 4), np.int64)),
])
def test_an_answer_that_differs_in_any_output_is_a_mismatch(field, value):
    references, job = {}, load.Job(index=0, image=0, parameters=0)
    assert load.check(references, job, _answer()) is None  # the first: the reference
    assert load.check(references, job, _answer()) is None
    assert load.check(references, job, _answer(**{field: value})) == \
        f"mismatch with the first answer: {field}"


@pytest.mark.server
@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_load_script_runs_both_protocols_without_failures(tmp_path, capsys):
    out = tmp_path / "load.json"
    rc = load.main(["--requests", "40", "--concurrency", "4", "--warmup", "8",
                    "--dense-every", "10", "--min-size", "64", "--max-size", "107",
                    "--sample-every", "1", "--settle", "0.5",
                    "--repository", str(tmp_path / "repository"), "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

    requests = report["requests"]
    assert requests == {"planned": 40, "sent": 40, "answered_ok": 40, "failed": 0,
                        "warmup": 8, "stopped_by_max_seconds": False}
    for protocol in load.PROTOCOLS:  # both protocols carried requests, none failed
        stats = report["latency"][protocol]
        assert stats["ok"] > 0 and stats["failed"] == 0 and stats["errors"] == {}
        assert 0 < stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert report["concurrency"] == {"grpc": 2, "http": 2}
    # The export took load's own options (benchmarks.harness.prepare_repository's
    # export_args): the runner's thread count is set in the embedded config.
    embedded = (tmp_path / "repository" / "mask_rcnn" / "configs" / "embedded.pbtxt").read_text()
    assert re.search(r'key: "intra_op_threads"\s+value \{\s+string_value: "%d"'
                     % load.DEFAULT_INTRA_OP_THREADS, embedded), embedded
    # every parameter set came round (dense every 10th), and answers were compared
    assert report["combinations_checked"] > len(load.PARAMETER_SETS)
    assert report["verdicts"]["failures"] is True
    assert "failures: 0 (goal 0) PASS" in printed

    # memory: the server's processes and its shm regions were found before and after
    memory = report["memory"]
    rss = memory["server RSS (sum of VmRSS)"]
    assert rss["before"] > 100 * 2**20 and rss["after"] > 100 * 2**20
    assert rss["max"] >= max(rss["before"], rss["after"]) * 0.5
    shm = memory["/dev/shm regions, allocated"]
    assert shm["before"] > 0 and shm["after"] > 0
    names = set(report["processes_rss"])
    assert "tritonserver" in names
    assert {"stub:pipeline_bls", "stub:mask_rcnn"} <= names
    assert report["server_timing"]["models"]["pipeline_bls"]["requests"] == 40 - 8

    # the server is gone, and it left no shared-memory region behind
    assert live_members(report["server_pid"]) == []
    assert report["shm_left_after_stop"]["files"] == 0


def test_a_later_answer_that_differs_is_a_mismatch():
    references = {}
    job = load.Job(index=0, image=1, parameters=2)
    assert load.check(references, job, _answer()) is None  # the first: the reference
    assert load.check(references, job, _answer()) is None
    assert load.check(references, job, _answer(classes=np.array([5], np.int64))) == \
        "mismatch with the first answer: classes"
    other = load.Job(index=1, image=0, parameters=2)  # another combination: its own reference
    assert load.check(references, other, _answer(classes=np.array([5], np.int64))) is None
