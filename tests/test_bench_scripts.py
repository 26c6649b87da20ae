"""benchmarks.pipeline and benchmarks.monitoring: one smoke run each at the tiniest settings
against the session's exported repository (real servers). They check that each script
measures and reports what it says, not how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
