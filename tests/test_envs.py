"""Python execution environments (EXECUTION_ENV_PATH): the relocatable directory built by
envs/build_env_dir.sh, served for real by the embedded server (as a directory and as an
archive the backend unpacks); the assembly that places it; the conda-pack script's logic
with stand-ins for conda and conda-pack (neither can run here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MODEL_NAME, PIPELINE_NAME
from export import execution_env as xenv
from export.repository import assemble, check_self_contained
from server.launcher import ServerFailed, TritonServer

ROOT = Path(__file__).resolve().parent.parent
BUILD_ENV_DIR = ROOT / "envs" / "build_env_dir.sh"
BUILD_CONDA_ENV = ROOT / "envs" / "build_conda_env.sh"
# The embedded server's stub is built for the venv's Python; the environment must match.
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
# Built once per machine (the script skips an up-to-date build), beside the other builds.
ENV_OUTPUT = ROOT / "build" / "envs" / f"serving-py{PY}"


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def link_tree(src: Path, dst: Path, ignore=None) -> Path:
    """A copy made of hard links: cheap, and a different path."""
    shutil.copytree(src, dst, copy_function=os.link, ignore=ignore)
    return dst


@pytest.fixture(scope="session")
def env_dir() -> Path:
    result = subprocess.run([str(BUILD_ENV_DIR), "--python", sys.executable, "--archive",
                             "--output", str(ENV_OUTPUT)],
                            capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return ENV_OUTPUT


def fake_env(root: Path, python: str = "3.12") -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "activate").write_text("# stand-in\n")
    (root / "lib" / f"python{python}").mkdir(parents=True)
    (root / "lib" / f"python{python}" / "os.py").write_text("")
    return root


def pack(env: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env, arcname=".")
    return archive


# --- the environment directory -------------------------------------------------------

def test_env_directory_is_relocatable_and_holds_what_the_python_models_import(env_dir, tmp_path):
    assert not [p for p in env_dir.rglob("*") if p.is_symlink()]
    assert not (env_dir / "lib" / f"python{PY}" / "site-packages" / "torch").exists(), \
        "the serving environment must stay small: no torch"
    moved = link_tree(env_dir, tmp_path / "elsewhere")
    probe = ("import json, os, sys, numpy, cv2, PIL, pycocotools.mask; "
             "print(json.dumps({'prefix': sys.prefix, 'os': os.__file__, 'numpy': numpy.__version__, "
             "'files': [m.__file__ for m in (numpy, cv2, PIL, pycocotools)]}))")
    # As the backend runs it: bash sources bin/activate, then the interpreter starts; a
    # bare PATH, so nothing of this venv can leak in.
    result = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "bash", "-c",
                             f'source "{moved}/bin/activate" && exec python3 -c "{probe}"'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["prefix"]) == moved
    for path in [report["os"], *report["files"]]:
        assert Path(path).is_relative_to(moved), path
    assert int(report["numpy"].split(".")[0]) < 2, report["numpy"]


def test_env_build_is_cached(env_dir):
    result = subprocess.run([str(BUILD_ENV_DIR), "--python", sys.executable, "--archive",
                             "--output", str(env_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "up to date" in result.stdout, result.stdout + result.stderr


def test_env_build_refuses_a_bad_interpreter_or_requirements(tmp_path):
    missing = subprocess.run([str(BUILD_ENV_DIR), "--python", str(tmp_path / "python9")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no Python" in missing.stderr and "python9" in missing.stderr
    nofile = subprocess.run([str(BUILD_ENV_DIR), "--python", sys.executable,
                             "--requirements", str(tmp_path / "r.txt")],
                            capture_output=True, text=True)
    assert nofile.returncode == 2 and str(tmp_path / "r.txt") in nofile.stderr


# --- the assembly ------------------------------------------------------------------------

@pytest.mark.parametrize("as_archive", [False, True], ids=["directory", "archive"])
def test_assembly_places_the_env_in_each_python_model(exported, tmp_path, as_archive):
    env = fake_env(tmp_path / "env")
    if as_archive:
        env = pack(env, tmp_path / "env.tar.gz")
    repo = assemble(exported.model_file, tmp_path / "repo", execution_env=env)
    check_self_contained(repo)
    name = xenv.ARCHIVE_NAME if as_archive else xenv.DIRECTORY_NAME
    with_env = []
    for config_path in sorted(repo.glob("*/config.pbtxt")) + sorted(repo.glob("*/configs/*.pbtxt")):
        config = parse(config_path)
        model_dir = config_path.parent.parent if config_path.parent.name == "configs" else config_path.parent
        params = {k: v.string_value for k, v in config.parameters.items()}
        if config.backend == "python" and model_dir.name != MODEL_NAME:
            assert params[xenv.ENV_PARAMETER] == f"$$TRITON_MODEL_DIRECTORY/{name}", config_path
            assert params[xenv.PYTHON_PARAMETER] == "3.12"
            assert (model_dir / name).exists()
            assert config_path.read_text().startswith("# Generated by"), "header comments kept"
            with_env.append(model_dir.name)
        else:
            # mask_rcnn keeps the server's environment (torch), the ensemble has none.
            assert xenv.ENV_PARAMETER not in params, config_path
            assert not (model_dir / name).exists()
    assert {PIPELINE_NAME, "preprocess", "postprocess"} <= set(with_env)
    if as_archive:
        placed = repo / PIPELINE_NAME / name
        assert placed.read_bytes() == env.read_bytes()


def test_assembly_refuses_what_the_backend_could_not_activate(exported, tmp_path):
    no_activate = fake_env(tmp_path / "a")
    (no_activate / "bin" / "activate").unlink()
    with pytest.raises(ValueError, match="has no bin/activate"):
        assemble(exported.model_file, tmp_path / "repo", execution_env=no_activate)
    two = fake_env(tmp_path / "b")
    (two / "lib" / "python3.11").mkdir()
    (two / "lib" / "python3.11" / "os.py").write_text("")
    with pytest.raises(ValueError, match=r"found \['3.11', '3.12'\]"):
        xenv.inspect(two)
    nested = tmp_path / "nested.tar.gz"
    with tarfile.open(nested, "w:gz") as tar:  # packed from above its root
        tar.add(fake_env(tmp_path / "c"), arcname="c")
    with pytest.raises(ValueError, match="no bin/activate at its top level"):
        xenv.inspect(nested)
    (tmp_path / "env.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match="env.zip: expected a directory or a conda-pack archive"):
        xenv.inspect(tmp_path / "env.zip")
    (tmp_path / "broken.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        xenv.inspect(tmp_path / "broken.tar.gz")
    assert not (tmp_path / "repo").exists(), "nothing written for a refused environment"


def test_self_containment_checks_the_env_path(exported, tmp_path):
    repo = assemble(exported.model_file, tmp_path / "repo", execution_env=fake_env(tmp_path / "env"))
    config_path = repo / PIPELINE_NAME / "config.pbtxt"
    original = config_path.read_text()
    for bad, message in [("/opt/envs/python_env", "must be '\\$\\$TRITON_MODEL_DIRECTORY/<name>'"),
                         ("$$TRITON_MODEL_DIRECTORY/../preprocess/python_env", "inside the model"),
                         ("$$TRITON_MODEL_DIRECTORY/other_env", "other_env is missing")]:
        config_path.write_text(original.replace("$$TRITON_MODEL_DIRECTORY/python_env", bad))
        with pytest.raises(ValueError, match=message):
            check_self_contained(repo)


def test_cli_assemble_takes_an_execution_env(exported, tmp_path, capsys):
    from export.__main__ import main

    env = pack(fake_env(tmp_path / "env"), tmp_path / "env.tar.gz")
    assert main(["assemble", "--model", str(exported.model_file), "--repository",
                 str(tmp_path / "repo"), "--execution-env", str(env)]) == 0
    config = parse(tmp_path / "repo" / PIPELINE_NAME / "config.pbtxt")
    assert config.parameters[xenv.ENV_PARAMETER].string_value.endswith(xenv.ARCHIVE_NAME)


# --- served for real ---------------------------------------------------------------------

def stub_libraries(repository: Path) -> dict[str, set[str]]:
    """model name -> files mapped by that model's Python backend stub (from /proc)."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            maps = (proc / "maps").read_text()
        except OSError:
            continue
        if not argv[0].endswith(b"triton_python_backend_stub") or len(argv) < 2:
            continue
        model_py = Path(argv[1].decode())  # <repository>/<model>/1/model.py
        if model_py.is_relative_to(repository):
            # "address perms offset device inode path": keep the mapped files' paths.
            found[model_py.parent.parent.name] = {
                fields[5] for fields in map(str.split, maps.splitlines())
                if len(fields) >= 6 and fields[5].startswith("/")}
    return found


def mapped(libraries: set[str], fragment: str) -> list[Path]:
    return [Path(p) for p in libraries if fragment in p]


def serve_and_compare(repository, reference, images, tmp_path, protocols=("http", "grpc"),
                      ensemble=True):
    from tests.test_server import assert_matches, infer

    server = TritonServer(repository, log=tmp_path / "server.log").start()
    try:
        for protocol in protocols:
            served = infer(server, protocol, images["scene.jpg"], {"score_threshold": 0.0})
            expected = reference(images["scene.jpg"], RequestOptions(0.0))
            assert len(expected["scores"]) > 0
            assert_matches(served, expected)
        if ensemble:  # preprocess and postprocess run from the environment too
            answer = infer(server, "grpc", images["tall.png"], {"score_threshold": 0.0},
                           model="infer_pipeline")
            assert_matches(answer, reference(images["tall.png"], RequestOptions(0.0)))
        return stub_libraries(repository), server.log_text()
    finally:
        server.stop()


@pytest.mark.server
@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_embedded_server_serves_pipeline_bls_from_the_env_directory(
        exported, env_dir, reference, images, tmp_path):
    repo = assemble(exported.model_file, tmp_path / "repo", execution_env=env_dir)
    libraries, log = serve_and_compare(repo, reference, images, tmp_path)
    for model in (PIPELINE_NAME, "preprocess", "postprocess"):
        env = repo / model / xenv.DIRECTORY_NAME
        for fragment in (f"libpython{PY}", "cv2", "numpy/core/_multiarray_umath"):
            paths = mapped(libraries.get(model, set()), fragment)
            assert paths and all(p.is_relative_to(env) for p in paths), (model, fragment, paths)
    # The runner keeps the server's environment: its interpreter is not the env's.
    runner = mapped(libraries[MODEL_NAME], f"libpython{PY}")
    assert runner and not any(xenv.DIRECTORY_NAME in str(p) for p in runner), runner


@pytest.mark.server
@pytest.mark.ci  # a slow smoke run: CI only (tests/conftest.py)
def test_embedded_server_unpacks_the_env_archive(exported, env_dir, reference, images, tmp_path):
    archive = env_dir.with_name(env_dir.name + ".tar.gz")
    repo = assemble(exported.model_file, tmp_path / "repo", execution_env=archive)
    # pipeline_bls and the model it calls: each archive costs an unpacking at start.
    for model in repo.iterdir():
        if model.name not in (PIPELINE_NAME, MODEL_NAME):
            shutil.rmtree(model)
    libraries, log = serve_and_compare(repo, reference, images, tmp_path, ("grpc",), False)
    assert f"Using Python execution env {repo / PIPELINE_NAME / xenv.ARCHIVE_NAME}" in log
    paths = mapped(libraries[PIPELINE_NAME], "cv2")
    # The backend unpacks each archive under /tmp/python_env_*/N.
    assert paths and all(str(p).startswith("/tmp/python_env_") for p in paths), paths


@pytest.mark.server
def test_an_env_without_pycocotools_fails_to_load_pipeline_bls(exported, env_dir, tmp_path):
    """The environment's contents are what the model gets: the venv has pycocotools, the
    environment does not, and the model fails to load."""
    lacking = link_tree(env_dir, tmp_path / "env",
                        ignore=lambda d, names: [n for n in names if n.startswith("pycocotools")])
    full = assemble(exported.model_file, tmp_path / "full", execution_env=lacking)
    repo = tmp_path / "repo"
    repo.mkdir()
    link_tree(full / PIPELINE_NAME, repo / PIPELINE_NAME)  # alone: no torch to load
    server = TritonServer(repo, log=tmp_path / "server.log", ready_timeout=120)
    with pytest.raises(ServerFailed):
        server.start(attempts=1)
    assert "No module named 'pycocotools'" in server.log_text()


# --- the conda path, with stand-ins ----------------------------------------------------------

FAKE_CONDA = r"""#!/usr/bin/env bash
# Stand-in for conda: records its calls; `env create` lays out an environment of the
# spec's Python; `run` runs the command with the test's interpreter.
echo "conda $* NOUSERSITE=${PYTHONNOUSERSITE:-}" >> "$FAKE_LOG"
cmd="$1 $2"; shift
[[ "$cmd" == "env create" ]] && shift
prefix=""; file=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --file) file="$2"; shift 2 ;;
    --no-capture-output) shift ;;
    python) shift; exec "$FAKE_PYTHON" "$@" ;;
    *) echo "fake conda: unexpected $1" >&2; exit 9 ;;
  esac
done
cp "$file" "$FAKE_LOG.spec"
version="$(sed -nE 's/^[[:space:]]*-[[:space:]]*python=([0-9.]+)$/\1/p' "$file")"
mkdir -p "$prefix/bin" "$prefix/lib/python$version" "$prefix/conda-meta"
echo "# conda-pack's activate" > "$prefix/bin/activate"
: > "$prefix/lib/python$version/os.py"
"""

FAKE_CONDA_PACK = r"""#!/usr/bin/env bash
echo "conda-pack $* NOUSERSITE=${PYTHONNOUSERSITE:-}" >> "$FAKE_LOG"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    *) shift ;;
  esac
done
tar -C "$prefix" -czf "$output" .
"""


@pytest.fixture
def fake_conda(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("conda", FAKE_CONDA), ("conda-pack", FAKE_CONDA_PACK)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_PYTHON": sys.executable}

    def run(*args):
        result = subprocess.run([str(BUILD_CONDA_ENV), "--prefix", str(tmp_path / "prefix"), *args],
                                capture_output=True, text=True, env=env, timeout=300)
        calls = log.read_text().splitlines() if log.exists() else []
        return result, calls, Path(f"{log}.spec")
    return run


def test_conda_build_creates_checks_and_packs(fake_conda, tmp_path):
    output = tmp_path / "out" / "serving.tar.gz"
    # The stand-in runs the check with this venv's Python, so ask for its version.
    result, calls, spec = fake_conda("--python", PY, "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert [c.split()[:2] for c in calls] == [["conda", "env"], ["conda", "run"], ["conda-pack", "--prefix"]]
    assert all(c.endswith("NOUSERSITE=True") for c in calls), calls
    assert f"--output {output}.tmp." in calls[2] and "--format tar.gz" in calls[2]
    text = spec.read_text()
    assert f"- python={PY}\n" in text
    requirements = ROOT / "envs" / "requirements-serving.txt"
    assert f"-r {requirements}" in text and requirements.is_file()
    env = xenv.inspect(output)
    assert env.is_archive and env.python == PY
    assert not list(output.parent.glob("*.tmp.*"))


def test_conda_build_stops_when_the_environment_is_wrong(fake_conda, tmp_path):
    output = tmp_path / "serving.tar.gz"
    other = "3.12" if PY != "3.12" else "3.11"
    result, calls, _ = fake_conda("--python", other, "--output", str(output))
    assert result.returncode == 2
    assert f"environment Python is {PY}, expected {other}" in result.stderr
    assert "is not usable" in result.stderr
    assert not any(c.startswith("conda-pack") for c in calls) and not output.exists()


def test_conda_build_errors_name_the_problem(fake_conda, tmp_path):
    result, calls, _ = fake_conda("--python", "3")
    assert result.returncode == 2 and "--python must be MAJOR.MINOR such as 3.12, got '3'" in result.stderr
    result, _, _ = fake_conda("--output", str(tmp_path / "env.zip"))
    assert result.returncode == 2 and "env.zip" in result.stderr
    result, _, _ = fake_conda("--conda", "no-such-conda")
    assert result.returncode == 2 and "'no-such-conda' not found" in result.stderr
    assert calls == []


def test_conda_spec_serves_the_newest_container_and_the_serving_requirements():
    import yaml

    spec = yaml.safe_load((ROOT / "envs" / "conda-serving.yml").read_text())
    deps = spec["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    newest = (ROOT / "envs" / "triton-containers.tsv").read_text().strip().splitlines()[-1].split("\t")
    assert python == f"python={newest[3]}", (python, newest)
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == ["-r requirements-serving.txt"]
    assert (ROOT / "envs" / "requirements-serving.txt").is_file()
