"""benchmarks.formats: one smoke run against the session's exported repository (a real
server, a generated image): every mask format answered, and the exact ones decode to the
RLE masks pixel for pixel. What it measures of size and time is not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bls.contract.tensors import MaskFormat

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.server
@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_formats_smoke_run(exported, tmp_path):
    out = tmp_path / "formats.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.formats", "--repository",
                           str(exported.repository), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [rows] = json.loads(out.read_text())["images"].values()
    assert {name.split()[0] for name in rows} == {f.value for f in MaskFormat} - {"none"}
    for name in ("rle", "dense", "box", "polygon"):
        assert rows[name]["detections"] > 0 and rows[name]["pixels_differ"] == 0, rows[name]
    coarse = rows["polygon tolerance 1"]
    assert coarse["grpc_bytes"] < rows["polygon"]["grpc_bytes"]
    assert 0 < coarse["pooled_iou"] <= 1
