"""envs/setup.sh's choice of Python: 3.10, 3.11 or 3.12, whichever runs first in its order
(python3.11, python3.12, python3.10, python3) or the one named by PYTHON; anything else is
refused with a message saying what to do. (`--which` prints the choice and stops.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "envs" / "setup.sh"
THIS = f"{sys.version_info[0]}.{sys.version_info[1]}"  # the suite runs on a supported one


def fake(folder: Path, name: str, version: str | None) -> Path:
    """A command ``name`` that reports ``version`` like Python would, or fails like a
    pyenv shim of a version that is not selected (None)."""
    path = folder / name
    body = (f'echo {version}' if version else 'echo "pyenv: {name}: command not found" >&2; exit 127')
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def which(path_dirs: list[Path], python: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.pathsep.join(map(str, path_dirs + [Path("/usr/bin"), Path("/bin")])),
           "HOME": os.environ.get("HOME", "/tmp")}
    if python:
        env["PYTHON"] = python
    return subprocess.run(["bash", str(SETUP), "--which"], capture_output=True, text=True,
                          env=env, timeout=60)


def test_the_first_supported_python_that_runs_is_chosen(tmp_path):
    fake(tmp_path, "python3.11", None)  # on PATH, but does not run
    fake(tmp_path, "python3.12", "3.12")
    fake(tmp_path, "python3.10", "3.10")
    done = which([tmp_path])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["python3.12", "3.12"]


def test_a_named_python_is_used_and_an_unsupported_one_refused(tmp_path):
    named = fake(tmp_path, "mypython", "3.10")
    assert which([tmp_path], str(named)).stdout.split() == [str(named), "3.10"]
    old = fake(tmp_path, "python3", "3.9")
    refused = which([tmp_path], str(old))
    assert refused.returncode == 2
    assert "needs Python 3.10, 3.11 or 3.12" in refused.stderr and str(old) in refused.stderr
    assert "PYTHON=/path/to/python3.12" in refused.stderr


def test_the_suite_runs_on_a_python_setup_would_choose():
    done = which([Path(sys.executable).parent], sys.executable)
    assert done.returncode == 0 and done.stdout.split()[1] == THIS
