"""envs/setup.sh's choice of Python: 3.10, 3.11 or 3.12, whichever runs first in its order
(python3.11, python3.12, python3.10, python3) or the one named by PYTHON; anything else is
refused with a message saying what to do. (`--which` prints the choice and stops.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


PROMISED = ("3.10", "3.11", "3.12")  # the README's promise; envs/setup.sh SUPPORTED


def interpreters() -> dict[str, Path]:
    """A Python of each promised version on this machine: pyenv's (by full path: its
    shims do not run unless selected) or on PATH."""
    found = {}
    for version in PROMISED:
        candidates = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python"))
        on_path = shutil.which(f"python{version}")
        for python in candidates + ([Path(on_path)] if on_path else []):
            done = subprocess.run([str(python), "-c", "import sys; print(sys.version[:4])"],
                                  capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.startswith(version):
                found[version] = python
                break
    return found


def test_setup_supports_exactly_the_promised_versions():
    supported = re.search(r"^SUPPORTED=\((.*)\)$", SETUP.read_text(), re.M)[1].split()
    assert sorted(supported) == sorted(PROMISED)
    import pytriton

    stubs = Path(pytriton.__file__).parent / "tritonserver" / "python_backend_stubs"
    for version in PROMISED:  # the embedded server has a Python backend stub for each
        assert (stubs / version / "triton_python_backend_stub").is_file(), version


@pytest.mark.ci  # reaches PyPI
@pytest.mark.parametrize("version", PROMISED)
def test_requirements_resolve_on_every_promised_python(version, tmp_path):
    """pip resolves requirements.txt, with its markers, on each promised Python: the
    README's promise, checked where CI runs (nothing is installed)."""
    python = interpreters().get(version)
    assert python, f"CI: no Python {version} on this machine to check the promise with"
    venv = tmp_path / "venv"
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    subprocess.run(pip + ["install", "--quiet", "--upgrade", "pip"], check=True, timeout=300)
    done = subprocess.run(pip + ["install", "--dry-run", "--quiet", "-r",
                                 str(ROOT / "requirements.txt")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
