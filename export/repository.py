"""Assemble a self-contained Triton model repository.

Inputs: the templates in ``models/`` (backend, batching, instance groups: what operators
tune), the tensor contract (``bls/contract/tensors.py``: every input and output), the exported
model file and the metadata inside it. Output: a directory with no symlinks and no paths
outside itself (``bls/`` is copied into each Python model), so it can be mounted into a
container or uploaded to object storage as it is.

Each model keeps its template's ``config.pbtxt``; mask_rcnn also has
``configs/embedded.pbtxt``, which ``tritonserver --model-config-name=embedded`` selects on
the embedded server (no libtorch backend there). Models without that file fall back to
``config.pbtxt``, so one repository serves in both places.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bls.contract.metadata import METADATA_PARAMETER, ModelMetadata
from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, MONITORING_INPUTS,
                                  MONITORING_NAME, MONITORING_OUTPUT, ORIGINAL_SIZE, PIPELINE_INPUT,
                                  PIPELINE_NAME, PIPELINE_OUTPUTS, POSTPROCESS_NAME,
                                  PREPROCESS_NAME, TensorSpec)
from export import execution_env as xenv
from export.torchscript import MODEL_FILENAME, read_metadata

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "models"
BLS_PACKAGE = ROOT / "bls"
EMBEDDED_CONFIG = "embedded"
VERSION = "1"

# Python models that import bls (mask_rcnn's runner for its config parameters; the
# libtorch backend ignores the copy).
USES_BLS = (PIPELINE_NAME, PREPROCESS_NAME, POSTPROCESS_NAME, MONITORING_NAME, MODEL_NAME)
# Models whose inputs are all optional (monitoring takes an event or a command).
OPTIONAL_INPUTS = (MONITORING_NAME,)
# Parameters that name a place on the serving machine, set by the operator at assembly
# (`--set`), so they may be absolute paths.
DEPLOYMENT_PATH_PARAMETERS = ("capture_dir",)


@contextmanager
def staged_model_file(repository: Path) -> Iterator[Path]:
    """Give the path an export writes its model file to before assemble() takes it in.

    Hidden beside ``repository`` (the same file system), and removed afterwards whatever
    happens: assemble copies it into the repository.
    """
    repository = Path(repository)
    staging = repository.parent / f".{repository.name}.model.pt"
    try:
        yield staging
    finally:
        staging.unlink(missing_ok=True)


def parameters_override(**values) -> str:
    """Spell config parameters as an override (assemble's ``overrides``, ``--set MODEL=...``).

    Returns:
        pbtxt, e.g. parameters_override(resize="torch") ->
        'parameters { key: "resize" value { string_value: "torch" } }'; values are str()'d.
    """
    config = mc.ModelConfig()
    for key, value in values.items():
        config.parameters[key].string_value = str(value)
    return text_format.MessageToString(config, as_one_line=True)


def model_io(meta: ModelMetadata) -> dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
    """Give the (inputs, outputs) TensorSpecs of every model in the repository, by name."""
    model_outputs = meta.outputs
    return {
        MODEL_NAME: ((MODEL_INPUT,), model_outputs),
        PIPELINE_NAME: ((PIPELINE_INPUT,), PIPELINE_OUTPUTS),
        PREPROCESS_NAME: ((PIPELINE_INPUT,), (MODEL_INPUT, ORIGINAL_SIZE)),
        POSTPROCESS_NAME: (model_outputs + (ORIGINAL_SIZE,), PIPELINE_OUTPUTS),
        ENSEMBLE_NAME: ((PIPELINE_INPUT,), PIPELINE_OUTPUTS),
        MONITORING_NAME: (MONITORING_INPUTS, (MONITORING_OUTPUT,)),
    }


def _ensemble_steps(meta: ModelMetadata) -> mc.ModelEnsembling:
    """preprocess -> mask_rcnn -> postprocess, wired by contract names. Internal tensors
    take the name of the output that produces them."""
    steps = mc.ModelEnsembling()
    pre = steps.step.add(model_name=PREPROCESS_NAME, model_version=-1)
    pre.input_map[PIPELINE_INPUT.name] = PIPELINE_INPUT.name
    for spec in (MODEL_INPUT, ORIGINAL_SIZE):
        pre.output_map[spec.name] = spec.name
    model = steps.step.add(model_name=MODEL_NAME, model_version=-1)
    model.input_map[MODEL_INPUT.name] = MODEL_INPUT.name
    for spec in meta.outputs:
        model.output_map[spec.name] = spec.name
    post = steps.step.add(model_name=POSTPROCESS_NAME, model_version=-1)
    for spec in meta.outputs + (ORIGINAL_SIZE,):
        post.input_map[spec.name] = spec.name
    for spec in PIPELINE_OUTPUTS:
        post.output_map[spec.name] = spec.name
    return steps


def _tensor(spec: TensorSpec, cls):
    return cls(name=spec.name, data_type=mc.DataType.Value(spec.config_type), dims=spec.dims)


def render_config(template: str, name: str, meta: ModelMetadata,
                  override: str | None = None) -> mc.ModelConfig:
    """Render a template's text into the complete ModelConfig of model ``name``.

    ``override`` (pbtxt) replaces whole top-level fields of the result, e.g.
    ``dynamic_batching { max_queue_delay_microseconds: 100000 }``, except ``parameters``,
    which is merged key by key (the generated model_metadata stays unless replaced).

    Raises:
        ValueError: the template names another model.
    """
    config = text_format.Parse(template, mc.ModelConfig())
    if config.name != name:
        raise ValueError(f"template for {name!r} names the model {config.name!r}")
    inputs, outputs = model_io(meta)[name]
    del config.input[:], config.output[:]
    config.input.extend(_tensor(s, mc.ModelInput) for s in inputs)
    if name in OPTIONAL_INPUTS:
        for tensor in config.input:
            tensor.optional = True
    config.output.extend(_tensor(s, mc.ModelOutput) for s in outputs)
    if name in USES_BLS:
        config.parameters[METADATA_PARAMETER].string_value = meta.to_json()
    if config.platform == "ensemble":
        config.ensemble_scheduling.CopyFrom(_ensemble_steps(meta))
    if override:
        replacement = text_format.Parse(override, mc.ModelConfig())
        for field, _ in replacement.ListFields():
            if field.name != "parameters":
                config.ClearField(field.name)
        config.MergeFrom(replacement)
    return config


def _write_config(config: mc.ModelConfig, path: Path, template_path: Path) -> None:
    """Write ``config`` with a generated-from header and the template's own leading
    comments, which explain the model to whoever reads the repository."""
    comments = []
    for line in template_path.read_text().splitlines():
        if not line.startswith("#"):
            break
        comments.append(line)
    header = (f"# Generated by `python -m export` from {template_path.relative_to(ROOT)} and "
              "bls/contract/tensors.py; edit those, not this.")
    path.write_text("\n".join([header, *comments, text_format.MessageToString(config)]))


def assemble(model_file: Path, repository: Path, overrides: dict[str, str] | None = None,
             execution_env: Path | None = None) -> Path:
    """Build ``repository`` from the templates, bls/ and ``model_file``.

    Replaces the repository atomically; ``model_file`` may lie inside it.

    Args:
        model_file: TorchScript with metadata, written by an export.
        repository: the directory to (re)build.
        overrides: model name -> pbtxt replacing top-level fields of its configs.
        execution_env: a conda-pack archive or an environment directory, copied into the
            Python models and named by their EXECUTION_ENV_PATH (export/execution_env.py).

    Returns:
        The repository's resolved path.

    Raises:
        ValueError: an override names an unknown model, the environment is unusable,
            or the result is not self-contained.
    """
    overrides = dict(overrides or {})
    meta = read_metadata(model_file)
    unknown = set(overrides) - set(model_io(meta))
    if unknown:
        raise ValueError(f"overrides name unknown models {sorted(unknown)}; "
                         f"models: {sorted(model_io(meta))}")
    env = xenv.inspect(execution_env) if execution_env is not None else None
    repository = Path(repository).resolve()
    repository.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}.", dir=repository.parent))
    try:
        for name in model_io(meta):
            template_dir = TEMPLATES / name
            target = staging / name
            shutil.copytree(template_dir, target, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
            (target / VERSION).mkdir(exist_ok=True)
            for config_path in [target / "config.pbtxt", *sorted((target / "configs").glob("*.pbtxt"))]:
                template_path = template_dir / config_path.relative_to(target)
                config = render_config(config_path.read_text(), name, meta, overrides.get(name))
                _write_config(config, config_path, template_path)
            if name in USES_BLS:
                shutil.copytree(BLS_PACKAGE, target / VERSION / "bls",
                                # bls.testing is for users' unit tests, not for the server.
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "testing"))
        shutil.copyfile(model_file, staging / MODEL_NAME / VERSION / MODEL_FILENAME)
        if env is not None:
            xenv.place(env, staging)
        check_self_contained(staging)
        if repository.exists():
            old = repository.with_name(f".{repository.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            repository.rename(old)
            staging.rename(repository)
            shutil.rmtree(old)
        else:
            staging.rename(repository)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return repository


def check_self_contained(repository: Path) -> None:
    """Check that ``repository`` can move: no symlinks, no absolute paths in any config.

    Also a model.py beside every Python-backend config (tritonserver 2.51 hangs at
    start-up, rather than failing, when one is missing).

    Raises:
        ValueError: naming the first file that breaks a rule.
    """
    for dirpath, dirnames, filenames in os.walk(repository):
        for entry in dirnames + filenames:
            path = Path(dirpath) / entry
            if path.is_symlink():
                raise ValueError(f"{path} is a symlink; the repository must be self-contained")
    for config_path in repository.rglob("*.pbtxt"):
        config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        model_dir = config_path.parent.parent if config_path.parent.name == "configs" \
            else config_path.parent
        if config.backend == "python" and not (model_dir / VERSION / "model.py").is_file():
            raise ValueError(f"{config_path} uses the Python backend but "
                             f"{model_dir / VERSION / 'model.py'} is missing")
        xenv.check(config_path, model_dir, config)
        for key, value in config.parameters.items():
            text = value.string_value
            if key in DEPLOYMENT_PATH_PARAMETERS:
                continue
            if text.startswith("/") or str(ROOT) in text:
                raise ValueError(f"{config_path}: parameter {key} holds a machine path {text!r}")
