"""Selecting, rescaling and answering, including the zero-detection and no-mask cases."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import RequestOptions
from bls.contract.tensors import PIPELINE_OUTPUTS, MaskFormat, model_output, model_outputs
from bls.errors import InvalidInput
from bls.pipeline.answer import build_answer
from bls.pipeline.instances import Instances, from_model_outputs, rescale, select
from bls.pipeline.steps import finish

META = ModelMetadata(source="test", channel_order="BGR", min_size=20, max_size=40,
                     mask_resolution=28, class_names=("a", "b", "c"), category_ids=(1, 2, 3))


def detections(n, m=META.mask_resolution, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 30, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 10, (n, 2))], 1).astype(np.float32)
    return Instances(boxes, np.sort(rng.uniform(0, 1, n)).astype(np.float32)[::-1].copy(),
                      rng.integers(0, 3, n).astype(np.int64),
                      rng.uniform(0, 1, (n, m, m)).astype(np.float32))


def model_arrays(det, input_size=(40, 40)):
    values = {"boxes": det.boxes, "classes": det.classes, "masks": det.masks[:, None],
              "scores": det.scores, "image_size": np.array(input_size, np.int64)}
    return {model_output(META.outputs, field).name: value for field, value in values.items()}


def test_select_threshold_is_inclusive_and_cap_keeps_highest():
    det = Instances(np.zeros((4, 4), np.float32), np.array([0.25, 0.75, 0.5, 0.5], np.float32),
                     np.arange(4), None)
    kept = select(det, 0.5, None)
    assert kept.scores.tolist() == [0.75, 0.5, 0.5]
    assert kept.classes.tolist() == [1, 2, 3]  # ties keep the model's order
    assert select(det, 0.0, 2).classes.tolist() == [1, 2]
    assert len(select(det, 0.8, None)) == 0


def test_rescale_scales_clips_and_drops_empty_boxes():
    boxes = np.array([[10, 10, 20, 30], [35, 0, 45, 10], [39.9, 5, 50, 8], [5, 5, 5, 9]], np.float32)
    det = Instances(boxes, np.ones(4, np.float32), np.arange(4), None)
    out = rescale(det, input_size=(40, 40), output_size=(20, 80))  # x * 2, y * 0.5
    np.testing.assert_allclose(out.boxes, [[20, 5, 40, 15], [70, 0, 80, 5], [79.8, 2.5, 80, 4]])
    assert out.classes.tolist() == [0, 1, 2]  # the zero-width box is dropped


def test_zero_detections_give_empty_outputs_of_the_contract():
    empty = Instances(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                       np.zeros(0, np.int64), np.zeros((0, META.mask_resolution, META.mask_resolution), np.float32))
    for fmt in MaskFormat:
        out = build_answer(empty, (30, 50), META, fmt)
        assert list(out) == [s.name for s in PIPELINE_OUTPUTS]
        for spec in PIPELINE_OUTPUTS:
            assert out[spec.name].dtype == spec.numpy_dtype, spec.name
        assert out["boxes"].shape == (0, 4) and out["masks_rle"].shape == (0,)
        assert out["masks"].shape == (0, 30, 50)
        assert out["image_size"].tolist() == [30, 50]


def test_finish_answers_in_original_pixels_with_decodable_rle():
    det = detections(6)
    out = finish(model_arrays(det), (80, 120), META, RequestOptions(0.0))
    assert out["boxes"].shape == (6, 4)
    np.testing.assert_allclose(out["boxes"][:, 0::2], (det.boxes[:, 0::2] * 3).clip(0, 120), rtol=1e-6)
    assert [n.decode() for n in out["class_names"]] == [META.class_names[c] for c in out["classes"]]
    dense = finish(model_arrays(det), (80, 120), META, RequestOptions(0.0, None, MaskFormat.DENSE))
    decoded = mask_utils.decode([{"size": [80, 120], "counts": c} for c in out["masks_rle"]])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), dense["masks"])
    assert dense["masks_rle"].shape == (0,)
    none = finish(model_arrays(det), (80, 120), META, RequestOptions(0.0, None, MaskFormat.NONE))
    assert none["masks_rle"].shape == (0,) and none["masks"].shape == (0, 80, 120)


def test_model_without_masks():
    meta = ModelMetadata(**{**META.__dict__, "mask_resolution": None})
    det = detections(3)
    arrays = {s.name: {"boxes": det.boxes, "classes": det.classes, "scores": det.scores,
                       "image_size": np.array([40, 40])}[s.name.rsplit("__", 1)[0]]
              for s in model_outputs(None)}
    out = finish(arrays, (40, 40), meta, RequestOptions(0.0))
    assert out["boxes"].shape == (3, 4) and out["masks_rle"].shape == (0,)


def test_disagreeing_model_outputs_are_reported():
    arrays = model_arrays(detections(4))
    scores = model_output(META.outputs, "scores").name
    arrays[scores] = arrays[scores][:3]
    with pytest.raises(ValueError, match="boxes 4, classes 4, scores 3, masks 4"):
        from_model_outputs(arrays, META)


def test_every_mask_format_carries_the_same_masks_in_its_own_outputs():
    """rle, dense, box and polygon decode to the same masks; each format fills only its
    own outputs."""
    from client.results import Detections as Answer
    from client.results import decode_masks

    det = detections(6)
    outputs = {fmt: finish(model_arrays(det), (80, 120), META, RequestOptions(0.0, None, fmt))
               for fmt in MaskFormat}
    own = {MaskFormat.RLE: {"masks_rle"}, MaskFormat.DENSE: {"masks"},
           MaskFormat.POLYGON: {"masks_polygon"}, MaskFormat.BOX: {"masks_box", "mask_windows"},
           MaskFormat.NONE: set()}
    mask_outputs = set().union(*own.values())
    for fmt, out in outputs.items():
        assert [k for k in out] == [s.name for s in PIPELINE_OUTPUTS]
        filled_outputs = {k for k in mask_outputs if len(out[k])}
        assert filled_outputs == own[fmt], fmt
    decoded = {fmt: decode_masks(Answer.from_arrays(out)) for fmt, out in outputs.items()
               if fmt is not MaskFormat.NONE}
    np.testing.assert_array_equal(decoded[MaskFormat.RLE], decoded[MaskFormat.DENSE])
    np.testing.assert_array_equal(decoded[MaskFormat.BOX], decoded[MaskFormat.DENSE])
    np.testing.assert_array_equal(decoded[MaskFormat.POLYGON], decoded[MaskFormat.DENSE])


def test_box_and_polygon_answers_are_bounded_too():
    det = detections(6)
    box = finish(model_arrays(det), (80, 120), META, RequestOptions(0.0, None, MaskFormat.BOX))
    size = box["masks_box"].nbytes
    with pytest.raises(InvalidInput, match=r"box-cropped masks.*max_answer_bytes of 100;"):
        finish(model_arrays(det), (80, 120), META, RequestOptions(0.0, None, MaskFormat.BOX),
               max_answer_bytes=100)
    assert size > 100
    polygon = finish(model_arrays(det), (80, 120), META,
                     RequestOptions(0.0, None, MaskFormat.POLYGON))
    text = sum(len(p) for p in polygon["masks_polygon"])
    with pytest.raises(InvalidInput, match=r"polygons of the first \d+ of 6 masks alone.*"
                                           r"max_answer_bytes of 300;"):
        finish(model_arrays(det), (80, 120), META,
               RequestOptions(0.0, None, MaskFormat.POLYGON), max_answer_bytes=300)
    assert text > 300
