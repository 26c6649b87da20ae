"""benchmarks.pipeline and benchmarks.monitoring: one smoke run each at the tiniest settings
against the session's exported repository (real servers). They check that each script
measures and reports what it says, not how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.pipeline import BARE, PATHS
from bls.contract.tensors import ENSEMBLE_NAME, PIPELINE_NAME

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.server


def run(tmp_path, module: str, *args: str) -> tuple[str, dict]:
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", module, *args, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_pipeline_benchmark_smoke_run(exported, tmp_path):
    stdout, report = run(tmp_path, "benchmarks.pipeline", "--repository",
                         str(exported.repository), "--iterations", "2", "--warmup", "0",
                         "--repeats", "1")
    [served] = report["served"].values()
    assert set(served) == {PIPELINE_NAME, ENSEMBLE_NAME, BARE}
    assert all(s["n"] == 2 and s["median_ms"] > 0 for s in served.values()), served
    assert served[BARE]["overhead"] == 0 and served[BARE]["paired_overhead"] == 0  # itself
    assert set(report["masks"]) == {"1920x1080", "640x480"}
    for size, masks in report["masks"].items():
        assert set(masks["paths"]) == set(PATHS)
        assert all(len(p["samples_ms"]) == 1 for p in masks["paths"].values())
        # the dense masks and the seed's paste agree but for edge pixels
        assert 0.9 < masks["mean_iou_dense_vs_baseline"] <= 1, (size, masks)
    assert "goal: pipeline_bls within 3% of the bare model" in stdout
    assert "goal: rle" in stdout


@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_monitoring_benchmark_smoke_run(exported, tmp_path):
    stdout, report = run(tmp_path, "benchmarks.monitoring", "--repository",
                         str(exported.repository), "--iterations", "2", "--warmup", "1",
                         "--concurrency", "2", "--concurrent-requests", "4")
    [image] = report["images"].values()
    assert image["answers_equal"] is True  # monitoring never changes an answer
    assert image["monitored"]["n"] == image["unmonitored"]["n"] == 2
    assert report["events_sent"] == 3 and report["events_recorded"] >= 3  # one per request
    concurrent = report["concurrent"]
    assert concurrent["monitored"]["n"] == concurrent["unmonitored"]["n"] == 2
    assert "monitoring recorded" in stdout and "goal:" in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gpu_check: no CUDA device is visible" in done.stdout + done.stderr


@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_gpu_check_smoke_run_on_the_cpu(exported, tmp_path):
    """make gpu-check's steps with --allow-cpu: served answers against the in-process
    references, both paths, and the throughput table; no GPU figure."""
    stdout, report = run(tmp_path, "benchmarks.gpu_check", "--allow-cpu", "--skip-tests",
                         "--repository", str(exported.repository), "--generated", "2",
                         "--requests", "2", "--concurrency", "1", "--precisions", "fp32")
    assert [c["ok"] for c in report["checks"]] == [True, True], report["checks"]
    for path in ("parity device=cpu", "parity host path"):
        assert report[path]["images"] == 2 and report[path]["mask_iou"] >= 0.99, report[path]
    assert {(t["model"], t["errors"]) for t in report["throughput"]} == {
        (PIPELINE_NAME, 0), ("mask_rcnn", 0)}
    assert "GPU check on the CPU (--allow-cpu: no GPU figures)" in stdout


@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_chaos_smoke_run(tmp_path):
    """benchmarks.chaos at its tiniest: every kind sent and ended as it should through a
    stub kill and a hung monitoring, and every verdict computed from the run."""
    stdout, report = run(tmp_path, "benchmarks.chaos", "--requests", "140", "--kills-at", "40",
                         "--rss-from", "100", "--hang-events", "2", "--hang-s", "2")
    from benchmarks.chaos import KINDS
    assert set(report["ended"]) == set(KINDS)
    assert all(sum(o.values()) == 20 for o in report["ended"].values()), report["ended"]
    assert [k["after"] for k in report["kills"]] == [40] and report["kills"][0]["back_s"] < 30
    checks = report["verdicts"]
    assert checks["_wrong"] == {kind: {} for kind in KINDS}, checks
    assert checks["no try waits for its client's deadline"] and checks["no NOT_FOUND"]
    assert "kill after answer 40 (2 stubs)" in stdout
