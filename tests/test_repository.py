"""The assembled repository: every config is valid against Triton's model-config schema,
carries the contract's tensors, and the directory is self-contained."""

import filecmp
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bls.contract.metadata import METADATA_PARAMETER, ModelMetadata
from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_NAME, PIPELINE_INPUT, PIPELINE_NAME,
                                  PIPELINE_OUTPUTS)
from export.repository import (BLS_PACKAGE, assemble, check_self_contained, model_io,
                               parameters_override)

CONFIG_TYPES = {"TYPE_UINT8", "TYPE_INT64", "TYPE_FP32", "TYPE_STRING"}


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def tensors(entries):
    return [(t.name, mc.DataType.Name(t.data_type), tuple(t.dims)) for t in entries]


def specs(entries):
    return [(s.name, s.config_type, s.dims) for s in entries]


def test_every_model_has_the_contract_io(exported):
    io = model_io(exported.meta)
    assert sorted(p.name for p in exported.repository.iterdir()) == sorted(io)
    for name, (inputs, outputs) in io.items():
        configs = [exported.repository / name / "config.pbtxt",
                   *sorted((exported.repository / name / "configs").glob("*.pbtxt"))]
        for path in configs:
            config = parse(path)
            assert config.name == name
            assert tensors(config.input) == specs(inputs), path
            assert tensors(config.output) == specs(outputs), path
            assert {t for _, t, _ in tensors(config.input) + tensors(config.output)} <= CONFIG_TYPES


def test_mask_rcnn_serves_on_libtorch_in_the_container_and_python_here(exported):
    container = parse(exported.repository / MODEL_NAME / "config.pbtxt")
    embedded = parse(exported.repository / MODEL_NAME / "configs" / "embedded.pbtxt")
    assert container.backend == "pytorch" and container.max_batch_size == 0
    assert [g.kind for g in container.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert embedded.backend == "python"
    assert [g.kind for g in embedded.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    version = exported.repository / MODEL_NAME / "1"
    assert (version / "model.pt").is_file() and (version / "model.py").is_file()


def test_pipeline_models_carry_the_exported_metadata(exported):
    for name in ("pipeline_bls", "preprocess", "postprocess"):
        config = parse(exported.repository / name / "config.pbtxt")
        meta = ModelMetadata.from_json(config.parameters[METADATA_PARAMETER].string_value)
        assert meta == exported.meta, name
    bls_config = parse(exported.repository / PIPELINE_NAME / "config.pbtxt")
    assert bls_config.max_batch_size > 0 and bls_config.HasField("dynamic_batching")


def test_ensemble_wiring_is_complete(exported):
    config = parse(exported.repository / ENSEMBLE_NAME / "config.pbtxt")
    assert config.platform == "ensemble"
    available = {PIPELINE_INPUT.name}
    for step in config.ensemble_scheduling.step:
        step_config = parse(exported.repository / step.model_name / "config.pbtxt")
        assert set(step.input_map) == {t.name for t in step_config.input}, step.model_name
        assert set(step.input_map.values()) <= available, step.model_name
        assert set(step.output_map) <= {t.name for t in step_config.output}
        available |= set(step.output_map.values())
    assert {s.name for s in PIPELINE_OUTPUTS} <= available
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["preprocess", MODEL_NAME, "postprocess"]


def test_repository_is_self_contained_and_carries_bls(exported):
    check_self_contained(exported.repository)
    for name in ("pipeline_bls", "preprocess", "postprocess"):
        copy = exported.repository / name / "1" / "bls"
        comparison = filecmp.dircmp(BLS_PACKAGE, copy, ignore=["__pycache__", "testing"])
        assert not comparison.left_only and not comparison.diff_files, name
    for path in exported.repository.rglob("*"):
        assert not path.is_symlink(), path


def test_symlink_or_missing_model_py_is_refused(exported, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(exported.repository, repo)
    check_self_contained(repo)
    link = repo / "pipeline_bls" / "1" / "outside"
    link.symlink_to(tmp_path)
    with pytest.raises(ValueError, match="is a symlink"):
        check_self_contained(repo)
    link.unlink()
    (repo / "preprocess" / "1" / "model.py").unlink()
    with pytest.raises(ValueError, match="model.py is missing"):
        check_self_contained(repo)


def test_reassembly_from_its_own_model_file_with_overrides(exported, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(exported.repository, repo)
    assemble(repo / MODEL_NAME / "1" / "model.pt", repo, {
        PIPELINE_NAME: "instance_group [ { count: 2, kind: KIND_CPU } ]\n"
                       "dynamic_batching { max_queue_delay_microseconds: 50 }"})
    config = parse(repo / PIPELINE_NAME / "config.pbtxt")
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    assert config.dynamic_batching.max_queue_delay_microseconds == 50
    assert filecmp.cmp(repo / MODEL_NAME / "1" / "model.pt", exported.model_file, shallow=False)
    assert not list(tmp_path.glob(".repo*")), "staging directories left behind"
    with pytest.raises(ValueError, match=r"unknown models \['nope'\]"):
        assemble(exported.model_file, repo, {"nope": "max_batch_size: 1"})


def test_parameters_override_spells_config_parameters():
    text = parameters_override(resize="torch", max_answer_bytes=5, monitoring_policy="",
                               monitoring_policy_json='{"sample_rate": 1.0}')
    config = text_format.Parse(text, mc.ModelConfig())
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "resize": "torch", "max_answer_bytes": "5", "monitoring_policy": "",
        "monitoring_policy_json": '{"sample_rate": 1.0}'}
