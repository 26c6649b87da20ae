"""benchmarks.sweep: its configuration syntax and recommendation (fast), and one smoke run
with the tiniest settings against the session's exported repository (real servers). Speed
goals live in the script, never here: the smoke run checks that it works, not how fast."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.sweep import STAGES_KEY, Point, SweepConfig, parse_config, path_times, recommend
from export.tune import TuneOptions

ROOT = Path(__file__).resolve().parent.parent


def test_compact_configuration_syntax():
    assert parse_config("1x2") == SweepConfig("1x2", 1, 2)
    config = parse_config("2x1:2,workers=3,delay=5000,stages=1")
    assert (config.rcnn_instances, config.rcnn_threads, config.bls_instances) == (2, 1, 2)
    assert (config.worker_threads, config.delay_us, config.stages) == (3, 5000, 1)
    assert config.label == "rcnn 2x1t, bls 2, stages 1, workers 3, delay 5000"
    assert parse_config("1x0").label == "rcnn 1xdefault, bls 1"
    assert dict(parse_config("2x1:2").tunings()) == {
        "mask_rcnn": TuneOptions(instances=2, intra_op_threads=1),
        "pipeline_bls": TuneOptions(instances=2),
        "preprocess": TuneOptions(instances=2),
        "postprocess": TuneOptions(instances=2)}
    for bad in ("2", "1x", "0x1", "1x1:0", "1x1,colour=3", "1x1;2"):
        with pytest.raises(ValueError, match="configuration"):
            parse_config(bad)


def point(config, target, c, throughput, p99, errors=0):
    return Point(config=config, spec=config, target=target, model=target, concurrency=c,
                 answered=10, errors=errors, seconds=1, throughput=throughput, p50_ms=p99 / 2,
                 p90_ms=p99, p99_ms=p99, mean_ms=p99 / 2, max_ms=p99,
                 server_cpu_ms_per_image=1, server_cpu_util=1, loadavg_1m=0)


def test_recommendation_is_the_best_bls_throughput_within_the_budget():
    points = [point("a", "bls", 1, 1.0, 900), point("a", "bls", 4, 2.0, 3000),
              point("b", "bls", 2, 1.5, 1500), point("b", "bls", 8, 3.0, 800, errors=1),
              point("b", "ensemble", 2, 9.0, 100)]
    best, _ = recommend(points, 2000)
    assert (best.config, best.concurrency) == ("b", 2)
    best, _ = recommend(points, None)
    assert (best.config, best.concurrency) == ("a", 4)
    best, reason = recommend(points, 500)
    assert best is None and "lowest p99 is 900 ms" in reason


def test_where_the_time_goes_counts_pipeline_bls_once():
    """pipeline_bls's execute lasts until its batch is answered: Triton's compute for it
    already holds its stages and the model call (summing them again counted it twice)."""
    bls = point("a", "bls", 1, 60.0, 20)
    bls.breakdown = {"pipeline_bls": {"queue_ms": 0.5, "compute_ms": 14.0},
                     STAGES_KEY: {"prepare_ms": 9.0, "finish_ms": 2.0, "total_ms": 13.5},
                     "mask_rcnn": {"queue_ms": 0.2, "compute_ms": 1.0}}
    assert path_times(bls) == [0.5, 11.0, 0.2, 1.0, 14.5]
    ensemble = point("a", "ensemble", 1, 60.0, 20)
    ensemble.breakdown = {"preprocess": {"queue_ms": 0.1, "compute_ms": 9.0},
                          "postprocess": {"queue_ms": 0.2, "compute_ms": 2.0},
                          "mask_rcnn": {"queue_ms": 0.2, "compute_ms": 1.0}}
    assert path_times(ensemble) == pytest.approx([0.3, 11.0, 0.2, 1.0, 12.5])


@pytest.mark.server
@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_sweep_smoke_run(exported, tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "benchmarks.sweep", "--repository", str(exported.repository),
               "--config", "1x1", "--config", "1x1:2,delay=1000", "--concurrency", "1,2",
               "--requests", "2", "--warmup", "1", "--generated", "160x120",
               "--latency-budget-ms", "600000", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # pipeline_bls against the ensemble at each point, a column of the table
    verdicts = re.findall(r"^  rcnn 1x1t.* \d+\.\d\dx (PASS|MISS|~) \(>= 1(\.05)?x\)$", done.stdout,
                          re.M)
    assert len(verdicts) == 2 * 2, done.stdout  # configurations x concurrency levels
    assert "== Recommendation" in done.stdout and "python -m export tune" in done.stdout

    report = json.loads((out / "sweep.json").read_text())
    rows = report["points"]
    assert len(rows) == 2 * 3 * 2  # configurations x targets x concurrency levels
    assert {(r["spec"], r["target"], r["concurrency"]) for r in rows} == {
        (s, t, c) for s in ("1x1", "1x1:2,delay=1000") for t in ("bls", "ensemble", "bare")
        for c in (1, 2)}
    assert all(r["errors"] == 0 and r["answered"] == 2 for r in rows), rows
    assert all(r["throughput"] > 0 and len(r["latencies_ms"]) == 2 for r in rows)
    # pipeline_bls's stage times come from its own metrics, per request answered.
    for r in (r for r in rows if r["target"] == "bls"):
        stages = r["breakdown"]["pipeline_bls stages"]
        assert min(stages[f"{s}_ms"] for s in ("prepare", "model", "finish")) > 0, r
        assert stages["total_ms"] >= sum(stages[f"{s}_ms"] for s in ("prepare", "model", "finish"))
        assert stages["model_ms"] >= r["breakdown"]["mask_rcnn"]["compute_ms"], r
    assert report["failures"] == {}
    assert report["recommendation"]["spec"] in ("1x1", "1x1:2,delay=1000")
    # Each configuration was tuned before its server started: the second served two
    # pipeline_bls instances, the first one; the exported repository is untouched.
    first, second = (out / "triton-0.log").read_text(), (out / "triton-1.log").read_text()
    assert "pipeline_bls_0_0" in first and "pipeline_bls_0_1" not in first
    assert "pipeline_bls_0_1" in second and "preprocess_0_1" in second
    assert "Tuned in place" not in (exported.repository / "pipeline_bls" / "config.pbtxt").read_text()
