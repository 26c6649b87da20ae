"""run_triton.sh --mode container (no Docker engine here): the docker command it builds
for a repository (image chosen from the export's torch and the environment's Python,
GPU selection, /dev/shm sized for the answers, ports, no pip install when the repository
carries its environment), and the libtorch config that image loads, against Triton's
model-config schema."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from bls.contract.tensors import MODEL_INPUT, MODEL_NAME, PIPELINE_NAME
from export.repository import assemble
from server.launcher import RUN_TRITON

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "envs" / "triton_container.py"
GIB = 1024 ** 3


def dry_run(repository: Path, *args: str):
    result = subprocess.run([str(RUN_TRITON), "--mode", "container", "--repository", str(repository),
                             "--dry-run", *args], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    return result, (shlex.split(result.stdout) if result.returncode == 0 else [])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def with_torch(repository: Path, torch: str) -> Path:
    """The repository as if exported with another torch (the metadata in its configs)."""
    for config in repository.rglob("*.pbtxt"):
        text = config.read_text()
        config.write_text(re.sub(r'(torch_version\\": \\")[^\\]+', rf"\g<1>{torch}", text))
    return repository


def env_archive(tmp_path: Path, python: str) -> Path:
    root = tmp_path / f"env{python}"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "activate").write_text("# stand-in\n")
    (root / "lib" / f"python{python}").mkdir(parents=True)
    (root / "lib" / f"python{python}" / "os.py").write_text("")
    archive = tmp_path / f"env{python}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    return archive


@pytest.fixture
def repo(exported, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(exported.repository, copy)
    return copy


def test_image_follows_the_export_torch_without_an_environment(repo):
    result, argv = dry_run(with_torch(repo, "2.5.1"), "--gpus", "0")
    assert result.returncode == 0, result.stderr
    # 24.08-24.10 carry PyTorch 2.5: the newest of them.
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in argv
    assert option(argv, "--gpus") == "device=0"
    # No environment in the repository: installed at start, and said so.
    assert "requirements-serving.txt" in result.stdout and "no execution environment" in result.stderr
    assert f"{repo}:/models:ro" in argv


def test_environment_replaces_the_install_and_picks_its_python(exported, tmp_path):
    repo = with_torch(assemble(exported.model_file, tmp_path / "repo",
                               execution_env=env_archive(tmp_path, "3.12")), "2.5.1")
    result, argv = dry_run(repo, "--gpus", "0,1", "--http-port", "18100", "--grpc-port", "18101",
                           "--metrics-port", "18102")
    assert result.returncode == 0, result.stderr
    # No 2.5 release has a Python 3.12 stub: the first newer one that does.
    image = "nvcr.io/nvidia/tritonserver:24.12-py3"
    assert argv[argv.index(image) + 1:argv.index(image) + 3] == ["tritonserver", "--model-repository=/models"]
    assert "pip" not in argv and not any("requirements-serving" in a for a in argv)
    assert option(argv, "--gpus") == '"device=0,1"'  # docker reads the list as CSV
    for mapping in ("127.0.0.1:18100:8000", "127.0.0.1:18101:8001", "127.0.0.1:18102:8002"):
        assert mapping in argv
    for arg in ("--model-control-mode=none", "--backend-config=python,shm-default-byte-size=16777216",
                "--backend-config=python,shm-growth-byte-size=16777216"):
        assert arg in argv
    assert "model-config-name" not in result.stdout  # the container serves config.pbtxt: libtorch
    # 3.10 stubs: 24.11 is the only 2.6 release with one.
    older = with_torch(assemble(exported.model_file, tmp_path / "repo310",
                                execution_env=env_archive(tmp_path, "3.10")), "2.6.0")
    assert "nvcr.io/nvidia/tritonserver:24.11-py3" in dry_run(older)[1]


def test_refusals_name_the_versions(exported, repo, tmp_path):
    result, _ = dry_run(repo)  # exported here with torch newer than every release
    assert result.returncode == 2
    assert f"exported with torch {exported.meta.torch_version}" in result.stderr
    assert "newest: 25.06" in result.stderr
    env311 = assemble(exported.model_file, tmp_path / "env311", execution_env=env_archive(tmp_path, "3.11"))
    result, _ = dry_run(with_torch(env311, "2.5.1"))
    assert result.returncode == 2 and "Python 3.11 stub" in result.stderr
    env312 = with_torch(assemble(exported.model_file, tmp_path / "env312",
                                 execution_env=env_archive(tmp_path, "3.12")), "2.5.1")
    result, _ = dry_run(env312, "--image", "nvcr.io/nvidia/tritonserver:24.10-py3")
    assert result.returncode == 2
    assert "has a Python 3.10 stub, the repository's execution environment is Python 3.12" in result.stderr
    result, _ = dry_run(with_torch(repo, "2.7.1"), "--image", "nvcr.io/nvidia/tritonserver:24.10-py3")
    assert result.returncode == 2 and "PyTorch 2.5.0a0+e000cf0ad9, older than the export's torch 2.7.1" in result.stderr
    result, argv = dry_run(repo, "--image", "example/tritonserver:tag")
    assert result.returncode == 0 and "is not in triton-containers.tsv" in result.stderr
    assert "example/tritonserver:tag" in argv
    result, _ = dry_run(with_torch(repo, "2.5.1"), "--gpus", "two")
    assert result.returncode == 2 and "--gpus must be all or GPU indices" in result.stderr and "'two'" in result.stderr


def shm_bytes(size: str) -> int:
    assert size.endswith("g"), size
    return int(size[:-1]) * GIB


def test_shm_is_sized_for_a_batch_of_dense_answers(exported, repo, tmp_path):
    detections = exported.meta.extra["detections"]
    base = shm_bytes(option(dry_run(with_torch(repo, "2.5.1"))[1], "--shm-size"))
    # pipeline_bls answers up to max_batch_size dense masks of 1080p at once.
    assert base >= 8 * detections * 1920 * 1080
    bigger_image = shm_bytes(option(dry_run(repo, "--answer-image", "3840x2160",
                                            "--image", "x/y:z")[1], "--shm-size"))
    assert bigger_image >= 8 * detections * 3840 * 2160 > base
    more = assemble(exported.model_file, tmp_path / "more",
                    {PIPELINE_NAME: "instance_group [ { count: 4, kind: KIND_CPU } ]"})
    more_shm = shm_bytes(option(dry_run(with_torch(more, "2.5.1"))[1], "--shm-size"))
    assert more_shm >= 4 * 8 * detections * 1920 * 1080 > base
    assert option(dry_run(repo, "--shm-size", "7g", "--image", "x/y:z")[1], "--shm-size") == "7g"
    bad = dry_run(repo, "--answer-image", "big", "--image", "x/y:z")[0]
    assert bad.returncode != 0 and "WIDTHxHEIGHT" in bad.stderr


def test_version_table_is_ordered_and_complete():
    sys.path.insert(0, str(HELPER.parent))
    try:
        import triton_container as tc
    finally:
        sys.path.remove(str(HELPER.parent))
    table = tc.load_table()
    releases = [r.release for r in table]
    assert releases == sorted(set(releases))
    servers = [tuple(map(int, r.tritonserver.split("."))) for r in table]
    assert servers == sorted(servers) and len(set(servers)) == len(servers)
    torches = [r.torch for r in table]
    assert torches == sorted(torches), "PyTorch never goes back between releases"
    assert {r.python for r in table} == {"3.10", "3.12"}
    assert table[releases.index("24.10")].tritonserver == "2.51.0"  # the embedded server's
    assert tc.choose("2.4.1", None, table).release == "24.07"
    assert tc.choose("2.1.0", None, table).release == "24.01"  # no 2.1: the oldest newer libtorch
    with pytest.raises(tc.PlanError, match="torch 2.9.0, newer than"):
        tc.choose("2.9.0", None, table)


def test_libtorch_config_is_valid_for_the_pytorch_backend(exported):
    """config.pbtxt as NVIDIA's container loads it: parsed by Triton's own schema
    (model_config.proto, strictly: an unknown field fails), and what the PyTorch backend
    requires of a TorchScript model: tensors named NAME__INDEX in the module's order."""
    path = exported.repository / MODEL_NAME / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    # The same config, as the server's HTTP API would return it, parses back equal.
    assert json_format.Parse(json_format.MessageToJson(config), mc.ModelConfig()) == config
    assert config.backend == "pytorch" and config.platform in ("", "pytorch_libtorch")
    assert config.max_batch_size == 0
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    assert config.parameters["INFERENCE_MODE"].string_value == "true"
    assert (exported.repository / MODEL_NAME / "1" / (config.default_model_filename or "model.pt")).is_file()
    [model_input] = config.input
    assert (model_input.name, list(model_input.dims)) == (MODEL_INPUT.name, [3, -1, -1])
    assert model_input.data_type == mc.TYPE_UINT8
    names = [o.name for o in config.output]
    assert names == [spec.name for spec in exported.meta.outputs]
    assert [int(n.rsplit("__", 1)[1]) for n in names] == list(range(len(names)))
    with pytest.raises(text_format.ParseError):
        text_format.Parse(path.read_text() + "\nno_such_field: 1", mc.ModelConfig())
