"""Place Python execution environments in the model repository (the Python backend's
``EXECUTION_ENV_PATH``).

An environment is a conda-pack archive (``envs/build_conda_env.sh``, for NVIDIA's
container) or an unpacked directory with ``bin/activate`` (``envs/build_env_dir.sh``).
The assembly copies it into each Python model that imports ``bls`` and points the
model's configs at it with ``$$TRITON_MODEL_DIRECTORY``: Triton resolves that to the
model's directory wherever the repository is (a mount, or a local copy of object storage,
which Triton downloads model by model, so a path leaving the model directory would not
exist there; the Python backend's documentation calls that undefined).

mask_rcnn keeps the server's environment: in the container it runs on libtorch, and the
embedded runner needs torch, which the serving environment deliberately lacks.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bls.contract.tensors import MODEL_NAME

ENV_PARAMETER = "EXECUTION_ENV_PATH"
# The environment's Python (major.minor), recorded for run_triton.sh, which checks it
# against the server's stub before starting; the backend ignores parameters it does
# not know.
PYTHON_PARAMETER = "execution_env_python"
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"
ARCHIVE_NAME = "python_env.tar.gz"
DIRECTORY_NAME = "python_env"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_STDLIB = re.compile(r"lib/python(\d+\.\d+)/os\.py")


@dataclass(frozen=True)
class ExecutionEnv:
    """Hold an execution environment, as ``inspect`` found it.

    Attributes:
        path: the archive or directory.
        is_archive: a conda-pack archive, not a directory.
        python: its Python, major.minor ("3.12").
    """

    path: Path
    is_archive: bool
    python: str  # "3.12"

    @property
    def placed_name(self) -> str:
        """The name of its copy in each model's directory."""
        return ARCHIVE_NAME if self.is_archive else DIRECTORY_NAME

    @property
    def parameter_value(self) -> str:
        """EXECUTION_ENV_PATH's value: its copy, through $$TRITON_MODEL_DIRECTORY."""
        return f"{MODEL_DIRECTORY}/{self.placed_name}"


def inspect(path: Path) -> ExecutionEnv:
    """Check that ``path`` is an environment the Python backend can activate, and read
    its Python version.

    The version is read from where its stdlib lies (``lib/pythonX.Y/os.py``).

    Args:
        path: a conda-pack archive or a directory with ``bin/activate``.

    Raises:
        ValueError: it is missing, not readable, has no ``bin/activate``, or has not
            exactly one Python stdlib.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "bin" / "activate").is_file():
            raise ValueError(f"execution environment {path} has no bin/activate, which the "
                             "Python backend sources; build it with envs/build_env_dir.sh "
                             "or pack it with envs/build_conda_env.sh")
        versions = sorted(p.parent.name.removeprefix("python")
                          for p in path.glob("lib/python*/os.py"))
        return ExecutionEnv(path, False, _one_python(path, versions))
    if not path.is_file():
        raise ValueError(f"execution environment {path} does not exist")
    if not path.name.endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"execution environment {path}: expected a directory or a "
                         f"conda-pack archive ({', '.join(ARCHIVE_SUFFIXES)})")
    versions, activate = set(), False
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                activate = activate or name == "bin/activate"
                match = _STDLIB.fullmatch(name)
                if match:
                    versions.add(match.group(1))
                if activate and versions:
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"execution environment {path} is not a readable tar archive: {e}")
    if not activate:
        raise ValueError(f"execution environment {path} has no bin/activate at its top "
                         "level (conda-pack archives do; was it packed from its root?)")
    return ExecutionEnv(path, True, _one_python(path, sorted(versions)))


def _one_python(path: Path, versions: list[str]) -> str:
    if len(versions) != 1:
        raise ValueError(f"execution environment {path}: expected one Python stdlib "
                         f"(lib/pythonX.Y/os.py), found {versions or 'none'}")
    return versions[0]


def _link_or_copy(src: str, dst: str) -> str:
    """Hard link where possible (one environment on disk for all models), else copy."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
            raise
        shutil.copy2(src, dst)
    return dst


def uses_env(config: mc.ModelConfig, model_name: str) -> bool:
    """Whether the model gets the environment: a Python-backend model except mask_rcnn."""
    return config.backend == "python" and model_name != MODEL_NAME


def place(env: ExecutionEnv, repository: Path) -> list[str]:
    """Copy ``env`` into every Python model of ``repository`` (except mask_rcnn) and
    point its configs at it.

    Sets EXECUTION_ENV_PATH and execution_env_python in each of its configs.

    Returns:
        The names of the models given the environment.

    Raises:
        ValueError: ``repository`` has no Python model to give it.
    """
    placed = []
    for model_dir in sorted(p for p in Path(repository).iterdir() if p.is_dir()):
        configs = [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]
        parsed = [(c, text_format.Parse(c.read_text(), mc.ModelConfig()))
                  for c in configs if c.is_file()]
        if not any(uses_env(config, model_dir.name) for _, config in parsed):
            continue
        target = model_dir / env.placed_name
        if env.is_archive:
            _link_or_copy(str(env.path), str(target))
        else:
            # Links inside a conda env (python3 -> python3.12) become files: the
            # repository holds no symlinks.
            shutil.copytree(env.path, target, symlinks=False, copy_function=_link_or_copy)
        for path, config in parsed:
            if uses_env(config, model_dir.name):
                config.parameters[ENV_PARAMETER].string_value = env.parameter_value
                config.parameters[PYTHON_PARAMETER].string_value = env.python
                _rewrite(path, config)
        placed.append(model_dir.name)
    if not placed:
        raise ValueError(f"no Python model in {repository} to give the execution environment")
    return placed


def _rewrite(path: Path, config: mc.ModelConfig) -> None:
    """Rewrite a generated config, keeping its leading comment lines."""
    lines = path.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    path.write_text("\n".join([*header, text_format.MessageToString(config)]))


def check(config_path: Path, model_dir: Path, config: mc.ModelConfig) -> None:
    """Check that EXECUTION_ENV_PATH, where set, names an environment inside the model's
    own directory through $$TRITON_MODEL_DIRECTORY.

    Raises:
        ValueError: it points elsewhere, or the environment is missing.
    """
    if ENV_PARAMETER not in config.parameters:
        return
    value = config.parameters[ENV_PARAMETER].string_value
    relative = value.removeprefix(MODEL_DIRECTORY + "/")
    if relative == value or ".." in Path(relative).parts or not relative:
        raise ValueError(f"{config_path}: {ENV_PARAMETER} {value!r} must be "
                         f"'{MODEL_DIRECTORY}/<name>' inside the model's directory")
    if not (model_dir / relative).exists():
        raise ValueError(f"{config_path}: {ENV_PARAMETER} {value!r}: "
                         f"{model_dir / relative} is missing")
