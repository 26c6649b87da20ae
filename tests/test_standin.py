"""The stand-in mask_rcnn (export/standin.py) and the sweep's stand-in mode: the
contract and plausible outputs (fast), then one smoke run of the sweep against real
servers and `export tune --from-sweep` applying its recommendation. Speed goals live in
the script; here only that it works and that the stand-in's latency is applied."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.sweep import SweepConfig, ideal_throughput
from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MODEL_NAME, PIPELINE_NAME, model_outputs
from bls.pipeline.steps import finish
from export.standin import metadata, standin_outputs, synthetic_outputs
from export.tune import TuneError, config_files, from_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("resolution", [28, 14, None])
def test_stand_in_outputs_follow_the_contract(resolution):
    specs = model_outputs(resolution)
    names = tuple(s.name for s in specs)
    outputs = standin_outputs(names, 20, resolution, 480, 640)
    assert list(outputs) == [s.name for s in specs]
    for spec in specs:
        value = outputs[spec.name]
        assert value.dtype == spec.numpy_dtype, spec.name
        assert len(value.shape) == len(spec.dims) and all(
            d == -1 or d == n for d, n in zip(spec.dims, value.shape)), (spec.name, value.shape)
    fields = {s.name.rsplit("__", 1)[0]: outputs[s.name] for s in specs}
    boxes, scores = fields["boxes"], fields["scores"]
    assert boxes.shape == (20, 4) and (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 640).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 480).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (np.diff(scores) <= 0).all() and scores.min() >= 0.5
    assert fields["classes"].min() >= 1 and fields["classes"].max() < 91
    assert list(fields["image_size"]) == [480, 640]
    if resolution:
        masks = fields["masks"]
        assert masks.min() >= 0 and masks.max() <= 1
        # blobs: each mask has an inside (>= 0.5) and an outside
        assert ((masks >= 0.5).any(axis=(1, 2, 3)) & (masks < 0.5).any(axis=(1, 2, 3))).all()
    # cached per input size: the stand-in costs nothing but its latency
    assert standin_outputs(names, 20, resolution, 480, 640)[specs[0].name] is outputs[specs[0].name]


def test_stand_in_outputs_make_a_full_answer():
    meta = metadata(28)
    outputs = standin_outputs(tuple(s.name for s in meta.outputs), 20, 28, 600, 800)
    answer = finish(outputs, (300, 400), meta, RequestOptions(0.5))
    assert len(answer["scores"]) == 20 and len(answer["masks_rle"]) == 20
    assert (answer["boxes"][:, 2] <= 400).all()  # rescaled to the original size
    assert synthetic_outputs(3, 10, 10, None).keys() == {"boxes", "classes", "scores",
                                                         "image_size"}


def test_ideal_throughput_is_bounded_by_cores_and_the_stand_in():
    config = SweepConfig("1x1", 1, 1, standin_ms=25.0)
    assert ideal_throughput(config, 1, 2, 50.0) == 40.0  # one stand-in: 1000 / 25 ms
    assert ideal_throughput(SweepConfig("1x1", 1, 1, standin_ms=0.0), 8, 2, 50.0) == 100.0
    assert ideal_throughput(SweepConfig("1x1", 1, 1, standin_ms=0.0), 1, 2, 50.0) == 50.0


@pytest.mark.server
@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_stand_in_sweep_smoke_run_and_tune_from_it(exported, tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "benchmarks.sweep", "--stand-in", "0,40",
               "--config", "1x1:1", "--concurrency", "1,2", "--requests", "4", "--warmup", "1",
               "--generated", "160x120", "--compute-repeats", "2", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for heading in ("== In process, one thread", "== Efficiency", "== Per mask_rcnn instance"):
        assert heading in done.stdout, done.stdout[-3000:]
    report = json.loads((out / "sweep.json").read_text())
    assert report["failures"] == {}
    points = report["points"]
    assert {(p["config"], p["target"], p["concurrency"]) for p in points} == {
        (f"stand-in {ms} ms x1, bls 1", t, c) for ms in (0, 40)
        for t in ("bls", "ensemble", "bare") for c in (1, 2)}
    assert all(p["errors"] == 0 and p["answered"] == 4 for p in points)
    # The stand-in's latency is applied: at 40 ms, one instance, every request to the
    # bare model takes at least 40 ms, and Triton counts as much compute.
    for p in (p for p in points if p["target"] == "bare"):
        slow = p["config"].startswith("stand-in 40")
        assert p["p50_ms"] >= 40 or not slow, p
        compute = p["breakdown"][MODEL_NAME]["compute_ms"]
        assert (compute >= 40) if slow else (compute < 40), p
    assert report["in_process"]["rate"] > 0
    assert len(report["efficiency"]) == sum(p["target"] != "bare" for p in points)
    assert all(p["compute_ms"] > 0 for p in points)  # measured next to each point
    per_instance = {r["standin_ms"]: r for r in report["per_model_instance"]}
    assert set(per_instance) == {0.0, 40.0}
    assert per_instance[40.0]["bls_instances_per_model_instance"] == 1
    assert per_instance[40.0]["worker_threads"] == 2

    # export tune applies it (pipeline_bls instances per mask_rcnn instance x the
    # repository's mask_rcnn instances, worker threads).
    repository = tmp_path / "repository"
    shutil.copytree(exported.repository, repository)
    done = subprocess.run([sys.executable, "-m", "export", "tune", "--repository",
                           str(repository), "--model", "mask_rcnn", "--instances", "2"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "export", "tune", "--repository",
                           str(repository), "--model", PIPELINE_NAME, "--from-sweep",
                           str(out / "sweep.json"), "--model-latency-ms", "40"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "this repository has 2 mask_rcnn instance(s)" in done.stdout
    [config] = config_files(repository, PIPELINE_NAME)
    assert config.config.instance_group[0].count == 2
    assert config.config.parameters["worker_threads"].string_value == "2"
    with pytest.raises(TuneError, match="the sweep measured 0, 40 ms"):
        from_sweep(out / "sweep.json", 10, repository)


def test_export_standin_assembles_a_repository_around_the_stand_in(tmp_path, capsys):
    from export.__main__ import main

    assert main(["standin", "--repository", str(tmp_path / "repo"), "--latency-ms", "7",
                 "--detections", "3", "--mask-resolution", "0"]) == 0
    version = tmp_path / "repo" / MODEL_NAME / "1"
    assert json.loads((version / "standin.json").read_text()) == {
        "latency_ms": 7.0, "detections": 3, "mask_resolution": None}
    assert (version / "model.py").read_text() == (ROOT / "export" / "standin.py").read_text()
    assert (tmp_path / "repo" / PIPELINE_NAME / "config.pbtxt").is_file()
    assert not list(tmp_path.glob(".repo*")), "the staging model file is left behind"
    with pytest.raises(SystemExit):
        main(["standin", "--repository", str(tmp_path / "other"), "--latency-ms", "-1"])
    assert "--latency-ms: must be >= 0, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
