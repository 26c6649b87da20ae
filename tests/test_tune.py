"""python -m export tune: instance counts, batching and thread settings changed in place,
validated, with refusals that name the option and its value. No server, no export: the
repository is assembled around a stand-in model file (metadata only), except the last
test, which tunes a copy of the session's exported repository."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bls.contract.metadata import METADATA_FILE, ModelMetadata
from bls.contract.tensors import ENSEMBLE_NAME, MODEL_NAME, PIPELINE_NAME
from export import tune as tune_mod
from export.__main__ import main as export_main
from export.repository import assemble, check_self_contained, model_io
from export.tune import TuneError, TuneOptions, tune

KIND_CPU, KIND_GPU = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU
META = ModelMetadata(source="test", channel_order="RGB", min_size=256, max_size=384,
                     mask_resolution=28, class_names=("background", "a", "b"),
                     category_ids=(0, 1, 2))


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture
def repo(tmp_path) -> Path:
    """A real assembly (templates, contract, bls/ copies) around a stand-in model file:
    read_metadata only needs the metadata inside the TorchScript zip."""
    model = tmp_path / "model.pt"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr(f"model/extra/{METADATA_FILE}", META.to_json())
    return assemble(model, tmp_path / "repository")


def configs(repo: Path, model: str) -> dict[str, mc.ModelConfig]:
    paths = [repo / model / "config.pbtxt", *sorted((repo / model / "configs").glob("*.pbtxt"))]
    return {str(p.relative_to(repo)): parse(p) for p in paths}


def snapshot(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): p.read_text() for p in sorted(repo.rglob("*.pbtxt"))}


def refused(repo: Path, model: str, match: str, **options) -> None:
    before = snapshot(repo)
    with pytest.raises(TuneError, match=match):
        tune(repo, model, TuneOptions(**options))
    assert snapshot(repo) == before, "a refused tuning must write nothing"


# --------------------------------------------------------------------------- changes
def test_mask_rcnn_instances_and_threads_go_to_both_configs_where_read(repo):
    result = tune(repo, MODEL_NAME, TuneOptions(instances=2, intra_op_threads=1))
    container = parse(repo / MODEL_NAME / "config.pbtxt")
    embedded = parse(repo / MODEL_NAME / "configs" / "embedded.pbtxt")
    assert [(g.count, g.kind) for g in container.instance_group] == [(2, KIND_GPU)]
    assert [(g.count, g.kind) for g in embedded.instance_group] == [(2, KIND_CPU)]
    # The runner (1/model.py) reads intra_op_threads; libtorch reads INTRA_OP_THREAD_COUNT.
    assert embedded.parameters["intra_op_threads"].string_value == "1"
    assert container.parameters["INTRA_OP_THREAD_COUNT"].string_value == "1"
    assert "intra_op_threads" not in container.parameters
    shown = [str(c) for c in result.changes]
    assert "mask_rcnn/config.pbtxt: instance_group: 1x KIND_GPU -> 2x KIND_GPU" in shown
    assert "mask_rcnn/configs/embedded.pbtxt: instance_group: 1x KIND_CPU -> 2x KIND_CPU" in shown
    assert "mask_rcnn/configs/embedded.pbtxt: parameters[intra_op_threads]: '0' -> '1'" in shown
    assert len(result.written) == 2


def test_inter_op_threads_only_where_read(repo):
    result = tune(repo, MODEL_NAME, TuneOptions(inter_op_threads=1))
    assert parse(repo / MODEL_NAME / "config.pbtxt").parameters[
        "INTER_OP_THREAD_COUNT"].string_value == "1"
    assert "inter_op_threads" not in parse(repo / MODEL_NAME / "configs" / "embedded.pbtxt").parameters
    assert any("reads no 'inter_op_threads'" in n for n in result.notes)
    # Only the embedded config asked for: nowhere to put it, refused.
    with pytest.raises(TuneError, match=r"--inter-op-threads 2: not applicable to mask_rcnn"):
        tune(repo, MODEL_NAME, TuneOptions(inter_op_threads=2), config_name="embedded")


def test_pipeline_bls_batching_and_workers(repo):
    result = tune(repo, PIPELINE_NAME, TuneOptions(
        instances=3, max_queue_delay_us=5000, preferred_batch_sizes=(4, 2), max_batch_size=4,
        worker_threads=3, max_in_flight_requests=6))
    config = parse(repo / PIPELINE_NAME / "config.pbtxt")
    assert config.instance_group[0].count == 3 and config.max_batch_size == 4
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.parameters["worker_threads"].string_value == "3"
    assert config.parameters["max_in_flight_requests"].string_value == "6"
    # The generated model_metadata and the monitoring policy are untouched.
    assert ModelMetadata.from_model_config(
        {"parameters": {k: {"string_value": v.string_value}
                        for k, v in config.parameters.items()}}) == META
    assert "monitoring_policy" in config.parameters
    assert {c.what for c in result.changes} == {
        "instance_group", "max_batch_size", "dynamic_batching", "parameters[worker_threads]",
        "parameters[max_in_flight_requests]"}


def test_header_and_comments_kept_and_marked(repo):
    path = repo / MODEL_NAME / "configs" / "embedded.pbtxt"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    tune(repo, MODEL_NAME, TuneOptions(instances=3))
    tune(repo, MODEL_NAME, TuneOptions(instances=2))  # twice: marked once
    lines = path.read_text().splitlines()
    assert lines[:len(header)] == header
    assert lines.count(tune_mod.TUNED_MARK) == 1
    assert parse(path).instance_group[0].count == 2


def test_nothing_changes_when_already_so(repo):
    before = snapshot(repo)
    shipped = parse(repo / PIPELINE_NAME / "config.pbtxt").instance_group[0].count
    result = tune(repo, PIPELINE_NAME, TuneOptions(instances=shipped))
    assert result.changes == [] and result.written == []
    assert snapshot(repo) == before


def test_dry_run_writes_nothing(repo):
    before = snapshot(repo)
    result = tune(repo, PIPELINE_NAME, TuneOptions(instances=4), dry_run=True)
    assert [c.what for c in result.changes] == ["instance_group"]
    assert snapshot(repo) == before


def test_gpu_kind_and_ids(repo):
    tune(repo, MODEL_NAME, TuneOptions(gpus=(0, 1)))  # only the container config is KIND_GPU
    assert list(parse(repo / MODEL_NAME / "config.pbtxt").instance_group[0].gpus) == [0, 1]
    assert not parse(repo / MODEL_NAME / "configs" / "embedded.pbtxt").instance_group[0].gpus
    tune(repo, MODEL_NAME, TuneOptions(kind="cpu"), config_name="config")
    group = parse(repo / MODEL_NAME / "config.pbtxt").instance_group[0]
    assert group.kind == KIND_CPU and not group.gpus  # ids dropped with the GPU kind
    tune(repo, PIPELINE_NAME, TuneOptions(kind="gpu", gpus=(1,)))
    group = parse(repo / PIPELINE_NAME / "config.pbtxt").instance_group[0]
    assert group.kind == KIND_GPU and list(group.gpus) == [1]


def test_unbatching_pipeline_bls_needs_dynamic_batching_dropped(repo):
    refused(repo, PIPELINE_NAME, r"--max-batch-size 0: .*dynamic_batching.*--no-dynamic-batching",
            max_batch_size=0)
    tune(repo, PIPELINE_NAME, TuneOptions(max_batch_size=0, no_dynamic_batching=True))
    config = parse(repo / PIPELINE_NAME / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("model, options, match", [
    (MODEL_NAME, {"max_queue_delay_us": 100},
     r"--max-queue-delay-us 100: mask_rcnn has max_batch_size 0"),
    (MODEL_NAME, {"preferred_batch_sizes": (2,)},
     r"--preferred-batch-sizes 2: mask_rcnn has max_batch_size 0"),
    (ENSEMBLE_NAME, {"max_queue_delay_us": 10}, r"--max-queue-delay-us 10: infer_pipeline has "
                                                r"max_batch_size 0"),
    (MODEL_NAME, {"max_batch_size": 4},
     r"--max-batch-size 4: mask_rcnn's inputs are unbatched by contract"),
    (PIPELINE_NAME, {"preferred_batch_sizes": (4, 16)},
     r"--preferred-batch-sizes 4,16: preferred batch size\(s\) \[16\] larger than max_batch_size 8"),
    (PIPELINE_NAME, {"max_batch_size": 2, "preferred_batch_sizes": (2, 4)},
     r"--preferred-batch-sizes 2,4: .*\[4\] larger than max_batch_size 2"),
    (PIPELINE_NAME, {"preferred_batch_sizes": (2, 2)}, r"--preferred-batch-sizes 2,2: a size is repeated"),
    (PIPELINE_NAME, {"preferred_batch_sizes": (0,)}, r"--preferred-batch-sizes 0: sizes must be at least 1"),
    (PIPELINE_NAME, {"gpus": (0, 1), "kind": "cpu"}, r"--gpus 0,1 with --kind cpu"),
    (PIPELINE_NAME, {"gpus": (0,)}, r"--gpus 0: not applicable to pipeline_bls: .*KIND_CPU "
                                    r"\(give --kind gpu"),
    (PIPELINE_NAME, {"instances": 0}, r"--instances 0: must be at least 1"),
    (PIPELINE_NAME, {"worker_threads": 0}, r"--worker-threads 0: must be at least 1"),
    (PIPELINE_NAME, {"max_in_flight_requests": 0}, r"--max-in-flight-requests 0: must be at least 1"),
    (MODEL_NAME, {"intra_op_threads": -1}, r"--intra-op-threads -1: must not be negative"),
    (PIPELINE_NAME, {"max_queue_delay_us": -5}, r"--max-queue-delay-us -5: must not be negative"),
    (ENSEMBLE_NAME, {"instances": 2}, r"--instances 2: infer_pipeline is an ensemble"),
    (PIPELINE_NAME, {"intra_op_threads": 2},
     r"--intra-op-threads 2: not applicable to pipeline_bls: .*reads no 'intra_op_threads'"),
    (MODEL_NAME, {"worker_threads": 2}, r"--worker-threads 2: not applicable to mask_rcnn"),
    (PIPELINE_NAME, {"no_dynamic_batching": True, "max_queue_delay_us": 5},
     r"--max-queue-delay-us 5 with --no-dynamic-batching"),
    (PIPELINE_NAME, {}, r"nothing to tune"),
    ("no_such_model", {"instances": 1}, r"--model no_such_model: no such model .*pipeline_bls"),
])
def test_refusals_name_the_option_and_write_nothing(repo, model, options, match):
    refused(repo, model, match, **options)


def test_refuses_an_unknown_config_name_and_missing_repository(repo, tmp_path):
    with pytest.raises(TuneError, match=r"--config-name nope: mask_rcnn has no such config "
                                        r"\(configs: config, embedded\)"):
        tune(repo, MODEL_NAME, TuneOptions(instances=1), config_name="nope")
    with pytest.raises(TuneError, match=r"--repository .*missing: no such directory"):
        tune(tmp_path / "missing", MODEL_NAME, TuneOptions(instances=1))


def test_refuses_a_config_with_several_instance_groups(repo):
    path = repo / PIPELINE_NAME / "config.pbtxt"
    config = parse(path)
    config.instance_group.add(count=1, kind=KIND_CPU)
    path.write_text(text_format.MessageToString(config))
    refused(repo, PIPELINE_NAME, r"--instances 2: pipeline_bls/config.pbtxt has 2 instance groups",
            instances=2)


# --------------------------------------------------------------------------- CLI
def test_cli_prints_old_to_new_and_refuses_with_status_2(repo, capsys):
    rc = export_main(["tune", "--repository", str(repo), "--model", PIPELINE_NAME,
                      "--instances", "3", "--preferred-batch-sizes", "2,4"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "pipeline_bls/config.pbtxt: instance_group: 2x KIND_CPU -> 3x KIND_CPU" in out
    assert ("pipeline_bls/config.pbtxt: dynamic_batching: {max_queue_delay_us 0} -> "
            "{max_queue_delay_us 0, preferred [2, 4]}") in out
    rc = export_main(["tune", "--repository", str(repo), "--model", MODEL_NAME,
                      "--max-queue-delay-us", "100"])
    assert rc == 2
    assert "error: --max-queue-delay-us 100: mask_rcnn has max_batch_size 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main(["tune", "--repository", str(repo), "--model", MODEL_NAME, "--gpus", "a"])


# --------------------------------------------------------------------------- exported
def test_tuned_exported_repository_is_still_valid_and_self_contained(exported, tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(exported.repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    tune(repo, MODEL_NAME, TuneOptions(instances=2, intra_op_threads=1, inter_op_threads=1))
    tune(repo, PIPELINE_NAME, TuneOptions(instances=2, max_queue_delay_us=1000,
                                          preferred_batch_sizes=(2, 4), worker_threads=1))
    tune(repo, "preprocess", TuneOptions(instances=2))
    check_self_contained(repo)
    # The schema and the contract, as test_repository checks them for a fresh assembly.
    for name, (inputs, outputs) in model_io(exported.meta).items():
        for path in [repo / name / "config.pbtxt", *sorted((repo / name / "configs").glob("*.pbtxt"))]:
            config = parse(path)
            original = parse(exported.repository / path.relative_to(repo))
            assert config.name == name
            assert list(config.input) == list(original.input), path
            assert list(config.output) == list(original.output), path
            assert [t.name for t in config.input] == [s.name for s in inputs]
            assert [t.name for t in config.output] == [s.name for s in outputs]
            assert config.parameters["model_metadata"] == original.parameters["model_metadata"]
    assert parse(repo / MODEL_NAME / "configs" / "embedded.pbtxt").instance_group[0].count == 2
