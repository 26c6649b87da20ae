"""python -m export tune: change instance counts, batching and thread settings of one model
in an assembled repository, in place, validated.

  python -m export tune --repository build/repository --model mask_rcnn --instances 2 --intra-op-threads 1
  python -m export tune --repository build/repository --model pipeline_bls --instances 2 \\
      --max-queue-delay-us 5000 --preferred-batch-sizes 2,4 --worker-threads 2
  python -m export tune --repository R --model mask_rcnn --kind gpu --gpus 0,1 --config-name config

Each of the model's configs is rewritten (mask_rcnn: ``config.pbtxt`` for NVIDIA's
container AND ``configs/embedded.pbtxt`` for the embedded server; ``--config-name``
picks one). An option goes to every config where it means something, and the command
refuses, naming the option and its value, when it means something nowhere:

* ``--instances`` / ``--kind`` / ``--gpus``: the config's one instance group (not on an
  ensemble, which has no instances). ``--gpus`` only where the kind is (or becomes)
  KIND_GPU; refused together with ``--kind cpu``.
* ``--max-batch-size``, ``--max-queue-delay-us``, ``--preferred-batch-sizes``,
  ``--no-dynamic-batching``: dynamic batching needs max_batch_size >= 1, preferred sizes
  must lie in 1..max_batch_size, and only a model whose inputs carry a batch dimension by
  contract (pipeline_bls) may switch between batched and unbatched.
* ``--intra-op-threads`` / ``--inter-op-threads``: where torch runs: the libtorch
  backend's INTRA_OP_THREAD_COUNT / INTER_OP_THREAD_COUNT (process-global there: the first
  model that sets one wins), and a Python-backend runner only if it reads a parameter of
  that name (declared in bls/contract/parameters.py: mask_rcnn's runner reads ``intra_op_threads``). 0 leaves
  torch's default.
* ``--worker-threads``: the ``worker_threads`` parameter, read by pipeline_bls.
* ``--max-in-flight-requests``: ``max_in_flight_requests``, read by pipeline_bls: requests one
  instance works on at once (default 2 x max_batch_size); beyond it they wait in
  Triton's queue.

Every config is validated (parsed and serialised with tritonclient's ModelConfig) before
any file is written; then each file is replaced atomically, keeping its generated header
and comments. What changed is printed as ``old -> new``. Tuning edits generated files:
re-assembling the repository from the templates undoes it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bls.contract.parameters import PYTHON_MODELS
from bls.contract.tensors import PIPELINE_NAME

KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
# Models whose inputs carry a batch dimension because their model.py handles one; every
# other model's contract is unbatched (mask_rcnn takes one [3, H, W] image of any size).
BATCHING_MODELS = (PIPELINE_NAME,)
# option -> the parameter it sets, per backend. A Python backend model gets the parameter
# only if it reads it (reads_parameter).
PARAMETERS = {
    "intra_op_threads": {"python": "intra_op_threads", "pytorch": "INTRA_OP_THREAD_COUNT"},
    "inter_op_threads": {"python": "inter_op_threads", "pytorch": "INTER_OP_THREAD_COUNT"},
    "worker_threads": {"python": "worker_threads"},
    "max_in_flight_requests": {"python": "max_in_flight_requests"},
}
PROCESS_GLOBAL = {"INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"}
MAIN_CONFIG = "config"  # --config-name for config.pbtxt; others name configs/<name>.pbtxt
TUNED_MARK = ("# Tuned in place by `python -m export tune`; re-assembling from the templates "
              "undoes it.")


class TuneError(ValueError):
    """A refused tuning: the message names the option and its value."""


@dataclass(frozen=True)
class TuneOptions:
    """Hold what to tune; None (or False) leaves a setting as it is.

    Attributes:
        instances: instance_group count.
        kind: "cpu" or "gpu".
        gpus: GPU ids of a KIND_GPU group.
        max_batch_size, max_queue_delay_us, preferred_batch_sizes: batching.
        no_dynamic_batching: remove dynamic_batching.
        intra_op_threads, inter_op_threads, worker_threads, max_in_flight_requests: the
            parameters of PARAMETERS.
    """

    instances: int | None = None
    kind: str | None = None  # "cpu" | "gpu"
    gpus: tuple[int, ...] | None = None
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    no_dynamic_batching: bool = False
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    worker_threads: int | None = None
    max_in_flight_requests: int | None = None

    def given(self) -> dict[str, object]:
        """The options set, by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None and getattr(self, f.name) is not False}


def flag(name: str) -> str:
    """Spell an option's field name as its flag: max_batch_size -> --max-batch-size."""
    return "--" + name.replace("_", "-")


def describe(name: str, value) -> str:
    """Render an option as the operator typed it: ``--option value``."""
    if value is True:
        return flag(name)
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    return f"{flag(name)} {value}"


@dataclass(frozen=True)
class Change:
    """Hold one changed field of one config, printed as ``config: what: old -> new``.

    Attributes:
        config: the config's path relative to the repository.
        what: the field.
        old, new: its values as text.
    """

    config: str
    what: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.config}: {self.what}: {self.old} -> {self.new}"


@dataclass
class TuneResult:
    """Hold what a tuning did.

    Attributes:
        model: the model tuned.
        changes: every field changed.
        notes: where an option was not set and why, and warnings.
        written: the files rewritten.
    """

    model: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- files
@dataclass
class ConfigFile:
    """Hold one config file as read.

    Attributes:
        path: the file.
        label: its path relative to the repository, for messages.
        header: its leading comment lines, kept as they are.
        config: the parsed config, tuned in place.
        body_comments: comment lines after the header (not kept: reported).
    """

    path: Path
    label: str
    header: list[str]
    config: mc.ModelConfig
    body_comments: int


def read_config(path: Path, label: str) -> ConfigFile:
    """Read a config file, its leading comment lines apart.

    Raises:
        TuneError: it is not a valid model config.
    """
    text = path.read_text()
    lines = text.splitlines()
    header = []
    for line in lines:
        if line.startswith("#") or (not line.strip() and header):
            header.append(line)
        else:
            break
    while header and not header[-1].strip():
        header.pop()
    body_comments = sum(1 for line in lines[len(header):] if line.lstrip().startswith("#"))
    try:
        config = text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise TuneError(f"{label}: not a valid model config: {e}") from None
    return ConfigFile(path, label, header, config, body_comments)


def render(file: ConfigFile) -> str:
    """Render a tuned config file: its header, TUNED_MARK, then the config."""
    header = list(file.header)
    if TUNED_MARK not in header:
        header.append(TUNED_MARK)
    return "\n".join([*header, text_format.MessageToString(file.config)])


def write_atomically(path: Path, text: str) -> None:
    """Replace the file at ``path`` by ``text`` at once, keeping its permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def models_in(repository: Path) -> list[str]:
    """List the models of ``repository`` (folders with a config.pbtxt), sorted."""
    return sorted(p.name for p in repository.iterdir()
                  if p.is_dir() and (p / "config.pbtxt").is_file())


def config_files(repository: Path, model: str, config_name: str | None = None) -> list[ConfigFile]:
    """Read the model's configs: config.pbtxt, then configs/*.pbtxt (or the one named).

    Raises:
        TuneError: no such repository, model or config.
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise TuneError(f"--repository {repository}: no such directory")
    known = models_in(repository)
    if model not in known:
        raise TuneError(f"--model {model}: no such model in {repository} "
                        f"(models: {', '.join(known) or 'none'})")
    model_dir = repository / model
    paths = {MAIN_CONFIG: model_dir / "config.pbtxt"}
    for path in sorted((model_dir / "configs").glob("*.pbtxt")):
        paths[path.stem] = path
    if config_name is not None:
        name = config_name.removesuffix(".pbtxt")
        if name not in paths:
            raise TuneError(f"--config-name {config_name}: {model} has no such config "
                            f"(configs: {', '.join(paths)})")
        paths = {name: paths[name]}
    return [read_config(p, str(p.relative_to(repository))) for p in paths.values()]


def reads_parameter(model_dir: Path, name: str) -> bool:
    """Tell whether a Python model reads the parameter ``name``, from the registry.

    The registry is bls/contract/parameters.py PYTHON_MODELS. A model it does not declare
    reads none that tune could set.
    """
    declared = PYTHON_MODELS.get(model_dir.name)
    return declared is not None and name in declared.names


# --------------------------------------------------------------------------- rules
def _check_values(options: TuneOptions) -> None:
    given = options.given()
    for name in ("instances", "worker_threads", "max_in_flight_requests"):
        if name in given and getattr(options, name) < 1:
            raise TuneError(f"{describe(name, given[name])}: must be at least 1")
    for name in ("max_batch_size", "max_queue_delay_us", "intra_op_threads", "inter_op_threads"):
        if name in given and getattr(options, name) < 0:
            raise TuneError(f"{describe(name, given[name])}: must not be negative")
    if options.preferred_batch_sizes is not None:
        sizes = options.preferred_batch_sizes
        if not sizes or min(sizes) < 1:
            raise TuneError(f"{describe('preferred_batch_sizes', sizes)}: sizes must be at least 1")
        if len(set(sizes)) != len(sizes):
            raise TuneError(f"{describe('preferred_batch_sizes', sizes)}: a size is repeated")
    if options.gpus is not None:
        if not options.gpus or min(options.gpus) < 0:
            raise TuneError(f"{describe('gpus', options.gpus)}: GPU ids are 0, 1, ...")
        if len(set(options.gpus)) != len(options.gpus):
            raise TuneError(f"{describe('gpus', options.gpus)}: a GPU id is repeated")
        if options.kind == "cpu":
            raise TuneError(f"{describe('gpus', options.gpus)} with --kind cpu: GPU ids only "
                            f"apply to KIND_GPU instances")
    if options.kind is not None and options.kind not in KINDS:
        raise TuneError(f"--kind {options.kind}: must be one of {', '.join(KINDS)}")
    if options.no_dynamic_batching:
        for name in ("max_queue_delay_us", "preferred_batch_sizes"):
            if name in given:
                raise TuneError(f"{describe(name, given[name])} with --no-dynamic-batching: "
                                f"choose one")


def _tune_instances(file: ConfigFile, model: str, options: TuneOptions,
                    applied: set[str], skipped: dict[str, list[str]]) -> None:
    config = file.config
    wanted = {n: v for n, v in options.given().items() if n in ("instances", "kind", "gpus")}
    if not wanted:
        return
    if config.platform == "ensemble":
        raise TuneError(f"{describe(*next(iter(wanted.items())))}: {model} is an ensemble, "
                        f"which has no instances (the server schedules its steps); tune its "
                        f"step models instead")
    if len(config.instance_group) > 1:
        raise TuneError(f"{describe(*next(iter(wanted.items())))}: {file.label} has "
                        f"{len(config.instance_group)} instance groups; tune edits a config "
                        f"with one (edit this one by hand)")
    group = config.instance_group[0] if config.instance_group else config.instance_group.add()
    if options.instances is not None:
        group.count = options.instances
        applied.add("instances")
    if options.kind is not None:
        group.kind = KINDS[options.kind]
        applied.add("kind")
        if group.kind != mc.ModelInstanceGroup.KIND_GPU:
            del group.gpus[:]
    if options.gpus is not None:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            del group.gpus[:]
            group.gpus.extend(options.gpus)
            applied.add("gpus")
        else:
            skipped.setdefault("gpus", []).append(
                f"{file.label} runs {mc.ModelInstanceGroup.Kind.Name(group.kind)}"
                + ("" if options.kind else " (give --kind gpu to change that)"))


def _tune_batching(file: ConfigFile, model: str, options: TuneOptions,
                   applied: set[str]) -> None:
    config = file.config
    given = options.given()
    if options.max_batch_size is not None:
        new, old = options.max_batch_size, config.max_batch_size
        if (new > 0) != (old > 0) and model not in BATCHING_MODELS:
            raise TuneError(f"{describe('max_batch_size', new)}: {model}'s inputs are "
                            f"{'un' if old == 0 else ''}batched by contract (max_batch_size "
                            f"{old}); only {', '.join(BATCHING_MODELS)} may change between "
                            f"batched and unbatched")
        config.max_batch_size = new
        applied.add("max_batch_size")
    if options.no_dynamic_batching:
        config.ClearField("dynamic_batching")
        applied.add("no_dynamic_batching")
    batching = {n: given[n] for n in ("max_queue_delay_us", "preferred_batch_sizes") if n in given}
    if batching and config.max_batch_size == 0:
        name, value = next(iter(batching.items()))
        raise TuneError(f"{describe(name, value)}: {model} has max_batch_size 0 ({file.label}): "
                        f"dynamic batching needs a model that batches (max_batch_size >= 1)")
    if options.max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
        applied.add("max_queue_delay_us")
    if options.preferred_batch_sizes is not None:
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(sorted(options.preferred_batch_sizes))
        applied.add("preferred_batch_sizes")
    # The result, whichever option led there.
    if config.max_batch_size == 0 and config.HasField("dynamic_batching"):
        culprit = (describe("max_batch_size", 0) if options.max_batch_size == 0
                   else f"{model}")
        raise TuneError(f"{culprit}: {file.label} has dynamic_batching, which needs "
                        f"max_batch_size >= 1 (add --no-dynamic-batching to drop it)")
    too_big = [s for s in config.dynamic_batching.preferred_batch_size if s > config.max_batch_size]
    if config.HasField("dynamic_batching") and too_big:
        if options.preferred_batch_sizes is not None:
            culprit = describe("preferred_batch_sizes", options.preferred_batch_sizes)
        else:
            culprit = describe("max_batch_size", config.max_batch_size)
        raise TuneError(f"{culprit}: preferred batch size(s) {too_big} larger than "
                        f"max_batch_size {config.max_batch_size} ({file.label})")


def _tune_parameters(file: ConfigFile, model_dir: Path, options: TuneOptions,
                     applied: set[str], skipped: dict[str, list[str]],
                     notes: list[str]) -> None:
    config = file.config
    for name, by_backend in PARAMETERS.items():
        value = getattr(options, name)
        if value is None:
            continue
        backend = config.backend or config.platform
        key = by_backend.get(backend)
        if key is None:
            skipped.setdefault(name, []).append(f"{file.label}: the {backend} backend has no "
                                                f"such setting")
            continue
        if backend == "python" and not reads_parameter(model_dir, key):
            skipped.setdefault(name, []).append(f"{file.label}: its Python model "
                                                f"({model_dir.name}, bls/contract/parameters.py) reads no "
                                                f"{key!r} parameter")
            continue
        config.parameters[key].string_value = str(value)
        applied.add(name)
        if key in PROCESS_GLOBAL:
            notes.append(f"{file.label}: {key} is process-global in the libtorch backend: "
                         f"the first model config that sets it wins")


# --------------------------------------------------------------------------- diff
def _group_text(group: mc.ModelInstanceGroup) -> str:
    text = f"{group.count}x {mc.ModelInstanceGroup.Kind.Name(group.kind)}"
    if group.gpus:
        text += f" gpus {list(group.gpus)}"
    rest = copy.deepcopy(group)
    for name in ("count", "kind", "gpus"):
        rest.ClearField(name)
    extra = text_format.MessageToString(rest, as_one_line=True)
    return f"{text} {{{extra}}}" if extra else text


def _batching_text(config: mc.ModelConfig) -> str:
    if not config.HasField("dynamic_batching"):
        return "(none)"
    batching = copy.deepcopy(config.dynamic_batching)
    parts = [f"max_queue_delay_us {batching.max_queue_delay_microseconds}"]
    if batching.preferred_batch_size:
        parts.append(f"preferred {list(batching.preferred_batch_size)}")
    batching.ClearField("max_queue_delay_microseconds")
    batching.ClearField("preferred_batch_size")
    rest = text_format.MessageToString(batching, as_one_line=True)
    return "{" + ", ".join(parts + ([rest] if rest else [])) + "}"


def diff(label: str, old: mc.ModelConfig, new: mc.ModelConfig) -> list[Change]:
    """List what tune may change that differs between two versions of a config.

    Compared: instance groups, max_batch_size, dynamic batching and parameters.
    """
    changes = []
    old_groups = ", ".join(_group_text(g) for g in old.instance_group) or "(none)"
    new_groups = ", ".join(_group_text(g) for g in new.instance_group) or "(none)"
    if old_groups != new_groups:
        changes.append(Change(label, "instance_group", old_groups, new_groups))
    if old.max_batch_size != new.max_batch_size:
        changes.append(Change(label, "max_batch_size", str(old.max_batch_size),
                              str(new.max_batch_size)))
    if _batching_text(old) != _batching_text(new):
        changes.append(Change(label, "dynamic_batching", _batching_text(old), _batching_text(new)))
    for key in sorted(set(old.parameters) | set(new.parameters)):
        a = repr(old.parameters[key].string_value) if key in old.parameters else "(unset)"
        b = repr(new.parameters[key].string_value) if key in new.parameters else "(unset)"
        if a != b:
            changes.append(Change(label, f"parameters[{key}]", a, b))
    return changes


# --------------------------------------------------------------------------- tune
def tune(repository: Path, model: str, options: TuneOptions, config_name: str | None = None,
         dry_run: bool = False) -> TuneResult:
    """Apply ``options`` to ``model``'s configs in ``repository``.

    Args:
        repository: an assembled model repository.
        model: the model to tune.
        options: what to change.
        config_name: only this config ("config" or a name in configs/); None: all.
        dry_run: compute the changes, write nothing.

    Raises:
        TuneError: an option is invalid or means nothing for this model; nothing is
            written.
    """
    _check_values(options)
    given = options.given()
    if not given:
        raise TuneError("nothing to tune: give at least one of --instances, --kind, --gpus, "
                        "--max-batch-size, --max-queue-delay-us, --preferred-batch-sizes, "
                        "--no-dynamic-batching, --intra-op-threads, --inter-op-threads, "
                        "--worker-threads")
    repository = Path(repository)
    files = config_files(repository, model, config_name)
    result = TuneResult(model)
    applied: set[str] = set()
    skipped: dict[str, list[str]] = {}
    tuned: list[tuple[ConfigFile, mc.ModelConfig]] = []
    for file in files:
        old = copy.deepcopy(file.config)
        _tune_instances(file, model, options, applied, skipped)
        _tune_batching(file, model, options, applied)
        _tune_parameters(file, repository / model, options, applied, skipped, result.notes)
        # Round trip: what is written must parse back to the same config.
        text = text_format.MessageToString(file.config)
        if text_format.Parse(text, mc.ModelConfig()) != file.config:
            raise TuneError(f"{file.label}: the tuned config does not survive serialisation")
        tuned.append((file, old))
    for name, value in given.items():
        if name not in applied:
            reasons = "; ".join(skipped.get(name, [])) or "no config of the model takes it"
            raise TuneError(f"{describe(name, value)}: not applicable to {model}: {reasons}")
        for reason in skipped.get(name, []):
            result.notes.append(f"{describe(name, value)} not set in {reason}")
    for file, old in tuned:
        changes = diff(file.label, old, file.config)
        result.changes += changes
        if file.body_comments:
            result.notes.append(f"{file.label}: {file.body_comments} comment line(s) inside "
                                f"the config body are not kept (only the leading ones)")
        if changes and not dry_run:
            write_atomically(file.path, render(file))
            result.written.append(file.path)
    return result


# --------------------------------------------------------------------------- from a sweep
def from_sweep(sweep_json: Path, model_latency_ms: float, repository: Path,
               config_name: str | None = None) -> tuple[TuneOptions, str]:
    """Make pipeline_bls options from a stand-in sweep's recommendation.

    The sweep is benchmarks/sweep.py --stand-in's sweep.json. For the stand-in latency
    ``model_latency_ms``: its pipeline_bls instances per mask_rcnn instance times the
    repository's mask_rcnn instances (rounded up), and its worker threads.

    Returns:
        (options, why: a sentence naming the figures it came from).

    Raises:
        TuneError: the file is unreadable, holds no recommendation, or none for
            ``model_latency_ms``.
    """
    try:
        report = json.loads(Path(sweep_json).read_text())
    except (OSError, ValueError) as e:
        raise TuneError(f"--from-sweep {sweep_json}: cannot read it: {e}") from None
    found = [r for r in report.get("per_model_instance") or [] if "config" in r]
    if not found:
        raise TuneError(f"--from-sweep {sweep_json}: no per-instance recommendation in it "
                        "(made by python -m benchmarks.sweep --stand-in ...)")
    latencies = sorted(r["standin_ms"] for r in found)
    match = [r for r in found if r["standin_ms"] == model_latency_ms]
    if not match:
        raise TuneError(f"--model-latency-ms {model_latency_ms:g}: the sweep measured "
                        f"{', '.join(f'{v:g}' for v in latencies)} ms; sweep again with "
                        f"--stand-in {model_latency_ms:g}")
    best = match[0]
    rcnn = [f.config.instance_group[0].count if f.config.instance_group else 1
            for f in config_files(repository, "mask_rcnn", config_name)]
    instances = math.ceil(best["bls_instances_per_model_instance"] * max(rcnn) - 1e-9)
    why = (f"sweep {sweep_json}: at {model_latency_ms:g} ms per image, "
           f"{best['bls_instances_per_model_instance']:g} pipeline_bls instance(s) x "
           f"{best['worker_threads']} worker thread(s) per mask_rcnn instance "
           f"({best['throughput']:.1f} img/s there); this repository has {max(rcnn)} "
           f"mask_rcnn instance(s)")
    return TuneOptions(instances=max(instances, 1), worker_threads=best["worker_threads"]), why


# --------------------------------------------------------------------------- CLI
def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


# The options that take one whole number: flag -> meaning (the TuneOptions field of the
# same name holds it).
WHOLE_NUMBER_OPTIONS = {
    "--instances": "instances (instance_group count)",
    "--max-batch-size": "max_batch_size",
    "--max-queue-delay-us": "dynamic batching: longest wait to fill a batch, microseconds",
    "--intra-op-threads": "torch threads per op (0: torch's default, one per core)",
    "--inter-op-threads": "torch inter-op threads (libtorch backend; a runner that reads it)",
    "--worker-threads": "pipeline_bls decode/paste threads per instance",
    "--max-in-flight-requests": "pipeline_bls requests in progress per instance (default 2 x "
                                "max batch size)",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add tune's options to the parser ``p``."""
    p.add_argument("--repository", type=Path, required=True,
                   help="an assembled model repository (python -m export), edited in place")
    p.add_argument("--model", required=True, help="model to tune, e.g. mask_rcnn, pipeline_bls")
    p.add_argument("--config-name", metavar="NAME",
                   help="only this config: 'config' (config.pbtxt, NVIDIA's container) or a "
                        "name in configs/ (e.g. 'embedded'); default: all of the model's")
    p.add_argument("--kind", choices=sorted(KINDS), help="instance kind (KIND_CPU / KIND_GPU)")
    p.add_argument("--gpus", type=_int_list, metavar="0,1",
                   help="GPU ids of a KIND_GPU group (instances per listed GPU)")
    p.add_argument("--preferred-batch-sizes", type=_int_list, metavar="2,4",
                   help="dynamic batching: preferred batch sizes")
    p.add_argument("--no-dynamic-batching", action="store_true",
                   help="remove dynamic_batching (e.g. with --max-batch-size 0)")
    for flag, meaning in WHOLE_NUMBER_OPTIONS.items():
        p.add_argument(flag, type=int, metavar="N", help=meaning)
    p.add_argument("--from-sweep", type=Path, metavar="SWEEP_JSON",
                   help="pipeline_bls only: apply the per-instance recommendation of "
                        "python -m benchmarks.sweep --stand-in (its sweep.json) for "
                        "--model-latency-ms; --instances / --worker-threads given here win")
    p.add_argument("--model-latency-ms", type=float, metavar="MS",
                   help="with --from-sweep: your model's latency per image (a stand-in "
                        "latency the sweep measured)")
    p.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand to ``sub`` (``python -m export``'s subparsers)."""
    p = sub.add_parser("tune", help="change instances, batching, threads of a model in place",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def options_from(args: argparse.Namespace) -> TuneOptions:
    """Read TuneOptions from parsed arguments."""
    return TuneOptions(**{f.name: getattr(args, f.name) for f in fields(TuneOptions)})


def run(args: argparse.Namespace) -> int:
    """Run ``python -m export tune`` on parsed arguments; return the exit status."""
    try:
        options = options_from(args)
        if args.from_sweep is not None or args.model_latency_ms is not None:
            if args.from_sweep is None or args.model_latency_ms is None:
                raise TuneError("--from-sweep and --model-latency-ms go together")
            if args.model != PIPELINE_NAME:
                raise TuneError(f"--from-sweep tunes pipeline_bls, not --model {args.model}")
            recommended, why = from_sweep(args.from_sweep, args.model_latency_ms,
                                          args.repository, args.config_name)
            print(why)
            options = replace(recommended, **options.given())
        result = tune(args.repository, args.model, options, args.config_name, args.dry_run)
    except TuneError as e:
        print(f"python -m export tune: error: {e}", file=sys.stderr)
        return 2
    for change in result.changes:
        print(change)
    if not result.changes:
        print(f"{args.model}: no change (already as asked)")
    for note in result.notes:
        print(f"note: {note}")
    if args.dry_run:
        print("dry run: nothing written")
    elif result.written:
        print(f"rewrote {len(result.written)} file(s); a running server picks the change up "
              f"at its next (re)load of {args.model}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m export tune``; return the exit status."""
    p = argparse.ArgumentParser(prog="python -m export tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
