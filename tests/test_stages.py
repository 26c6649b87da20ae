"""benchmarks.stages: one smoke run, in process and served, at the tiniest settings against
the session's exported repository (a real server). It checks that the profile is complete
and that its served split reads real numbers, not how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("grpc_and_client", "bls_call_ipc", "mask_rcnn_hop", "pipeline_bls_own")


@pytest.mark.server
def test_stages_smoke_run(exported, tmp_path):
    out = tmp_path / "stages.json"
    command = [sys.executable, "-m", "benchmarks.stages", "--repository",
               str(exported.repository), "--generated", "160x120", "--repeats", "2",
               "--warmup", "1", "--threads", "1", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== 2. Served vs in process" in done.stdout
    report = json.loads(out.read_text())
    [served] = report["served"].values()
    samples = served["samples_ms"]
    for i, ipc in enumerate(samples["ipc_scheduling"]):
        # The parts add up to the whole, per request.
        assert sum(samples[p][i] for p in PARTS) == pytest.approx(ipc, abs=1e-6)
        # pipeline_bls's own metrics were read: the client waited longer than the server
        # worked, and pipeline_bls's mask_rcnn call took longer than mask_rcnn itself.
        assert samples["grpc_and_client"][i] > 0 and samples["bls_call_ipc"][i] > 0, samples
    assert set(report["variants"]["variants"]) >= {"no_grad", "intra-op threads 1"}
