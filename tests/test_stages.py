"""benchmarks.stages: one smoke run at the tiniest settings against the session's exported
repository. It checks that the profile is complete and its variants compared, not how fast
anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.server
@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_stages_smoke_run(exported, tmp_path):
    out = tmp_path / "stages.json"
    command = [sys.executable, "-m", "benchmarks.stages", "--repository",
               str(exported.repository), "--generated", "160x120", "--repeats", "2",
               "--warmup", "1", "--threads", "1", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== Stages in process" in done.stdout and "== Model-call variants" in done.stdout
    report = json.loads(out.read_text())
    [profile] = report["in_process"].values()
    assert profile["size"].startswith("160x120->")
    stages = profile["median_ms"]
    assert set(stages) == {"decode", "resize", "model", "postprocess", "paste+RLE", "response"}
    assert stages["model"] > 0 and all(v >= 0 for v in stages.values()), stages
    found = report["variants"]
    assert set(found) >= {"no_grad", "intra-op threads 1"}
    # The model is deterministic: no_grad answers as inference_mode does.
    assert found["no_grad"]["verdict"] == "identical", found["no_grad"]
    assert all(r["median_ms"] > 0 for r in found.values())
