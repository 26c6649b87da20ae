import pytest

from bls.contract.metadata import METADATA_PARAMETER, ModelMetadata

GOOD = dict(source="t", channel_order="BGR", min_size=800, max_size=1333, mask_resolution=28,
            class_names=("a", "b"), category_ids=(1, 2))


def test_json_round_trip_and_config_parameter():
    meta = ModelMetadata(**GOOD, score_threshold=0.3, extra={"k": 1})
    assert ModelMetadata.from_json(meta.to_json()) == meta
    config = {"name": "m", "parameters": {METADATA_PARAMETER: {"string_value": meta.to_json()}}}
    assert ModelMetadata.from_model_config(config) == meta
    assert meta.class_name(1) == "b" and meta.class_name(7) == "class_7"
    assert [s.name for s in meta.outputs][2] == "masks__2"


@pytest.mark.parametrize("change,problem", [
    ({"channel_order": "RGBA"}, "channel_order='RGBA'"),
    ({"min_size": 900, "max_size": 800}, "min_size <= max_size, got 900, 800"),
    ({"category_ids": (1,)}, "1 category_ids for 2 class_names"),
    ({"score_threshold": 2.0}, "score_threshold=2.0"),
    ({"mask_resolution": 0}, "mask_resolution=0"),
])
def test_invalid_metadata_says_what(change, problem):
    with pytest.raises(ValueError, match=problem):
        ModelMetadata(**{**GOOD, **change})


def test_missing_parameter_says_how_to_fix():
    with pytest.raises(ValueError, match="python -m export"):
        ModelMetadata.from_model_config({"name": "pipeline_bls", "parameters": {}})
