"""The client: answers parsed, masks decoded, COCO results and overlays from synthetic
arrays (no server); then `python -m client infer` against the real server, checked
against the in-process pipeline over the same TorchScript file."""

from __future__ import annotations

import asyncio
import json
from dataclasses import fields

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import (ENSEMBLE_NAME, PIPELINE_INPUT, PIPELINE_NAME, PIPELINE_OUTPUTS,
                                  MaskFormat)
from client import cli, statistics
from client.overlay import class_color, decode_image, draw_overlay, write_png
from client.results import (AnswerError, Detections, coco_results, decode_masks, differences,
                            latency_summary, rle_strings, throughput)

H, W = 23, 31


# --------------------------------------------------------------------------- helpers
NO_POLYGON_OR_BOX = {"masks_polygon": [], "masks_box": [], "mask_windows": np.zeros((0, 4))}


def answer(**values) -> dict[str, np.ndarray]:
    """Output arrays by contract name (no batch dim); keywords are the output names (the
    polygon and box outputs default to empty)."""
    values = {**NO_POLYGON_OR_BOX, **values}
    assert set(values) == {s.name for s in PIPELINE_OUTPUTS}
    out = {}
    for spec in PIPELINE_OUTPUTS:
        value = values[spec.name]
        if spec.dtype == "BYTES":
            array = np.empty(len(value), dtype=object)
            array[:] = list(value)
            value = array
        out[spec.name] = np.asarray(value, dtype=spec.numpy_dtype)
    return out


def blobs(n: int = 3, height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    """uint8 [n, height, width]: a rectangle per mask with a one-pixel hole, and a stripe
    along the first row of the first."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, height, width), np.uint8)
    for m in masks:
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        h, w = rng.integers(3, height // 2), rng.integers(3, width // 2)
        m[y0:y0 + h, x0:x0 + w] = 1
        m[y0 + h // 2, x0 + w // 2] = 0  # a hole: the rectangle is at least 3x3
    if n:
        masks[0, 0, :] = 1
        masks[0, 1, 1] = 0
    return masks


def synthetic(mask_format: MaskFormat = MaskFormat.RLE, n: int = 3) -> Detections:
    """An answer carrying blobs(n) in ``mask_format``, made by the server's own encoders
    (bls.pipeline.masks) from whole-image windows."""
    from bls.pipeline.masks import MaskWindow, crops, polygons

    masks = blobs(n)
    boxes = np.array([[2, 3, 12, 9], [0.5, 1.25, 30, 22], [5, 5, 6, 7]][:n], np.float32).reshape(n, 4)
    windows = [MaskWindow(0, 0, m.astype(bool)) for m in masks]
    formats = {
        MaskFormat.RLE: {"masks_rle": [r["counts"] for r in mask_utils.encode(
            np.asfortranarray(masks.transpose(1, 2, 0)))] if n else []},
        MaskFormat.DENSE: {"masks": masks},
        MaskFormat.POLYGON: {"masks_polygon": [json.dumps(polygons(w)).encode() for w in windows]},
        MaskFormat.BOX: dict(zip(("masks_box", "mask_windows"), crops(windows))),
        MaskFormat.NONE: {},
    }
    return Detections.from_arrays(answer(**{
        "boxes": boxes, "scores": np.array([0.9, 0.6, 0.55][:n]),
        "classes": np.array([1, 2, 1][:n]), "class_names": [b"cat", b"dog", b"cat"][:n],
        "masks_rle": [], "masks": np.zeros((0, H, W)), "image_size": [H, W],
        **formats[mask_format]}))


class FakeResult:
    """What Detections.from_result uses of a tritonclient InferResult."""

    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)


# --------------------------------------------------------------------------- results
def test_detections_fields_are_the_contract_outputs():
    assert [f.name for f in fields(Detections)] == [s.name for s in PIPELINE_OUTPUTS]


def test_batch_dim_is_stripped_and_types_normalised():
    det = synthetic()
    arrays = answer(boxes=det.boxes, scores=det.scores, classes=det.classes,
                    class_names=np.array([n.encode() for n in det.class_names], dtype=object),
                    masks_rle=np.array(det.masks_rle, dtype=object), masks=det.masks,
                    image_size=list(det.image_size))
    batched = Detections.from_result(FakeResult({k: v[np.newaxis] for k, v in arrays.items()}),
                                     batched=True)
    plain = Detections.from_result(FakeResult(arrays), batched=False)
    for got in (batched, plain):
        assert differences(got, det) == []
        assert got.boxes.shape == (3, 4) and got.boxes.dtype == np.float32
        assert got.classes.dtype == np.int64
        assert got.class_names == ("cat", "dog", "cat")
        assert got.image_size == (H, W)
        assert all(isinstance(c, bytes) for c in got.masks_rle)


def test_answers_off_contract_are_refused():
    arrays = {s.name: np.zeros((0,)) for s in PIPELINE_OUTPUTS}
    del arrays[PIPELINE_OUTPUTS[0].name]
    with pytest.raises(AnswerError, match=f"no output '{PIPELINE_OUTPUTS[0].name}'"):
        Detections.from_result(FakeResult(arrays), batched=False)
    good = answer(boxes=np.zeros((0, 4)), scores=[], classes=[], class_names=[], masks_rle=[],
                  masks=np.zeros((0, H, W)), image_size=[H, W])
    with pytest.raises(AnswerError, match="batch dimension of 1"):
        Detections.from_arrays(good, batched=True)


def test_decode_masks_from_every_format_agree_with_pycocotools():
    expected = blobs(3)
    from tests.test_masks import holes_filled

    assert any((holes_filled(m) != m).any() for m in expected), "precondition: holes"
    for fmt in (MaskFormat.RLE, MaskFormat.DENSE, MaskFormat.BOX, MaskFormat.POLYGON):
        det = synthetic(fmt)
        got = decode_masks(det)
        assert got.dtype == np.uint8 and got.shape == (3, H, W)
        np.testing.assert_array_equal(got, expected, err_msg=fmt.value)
    with pytest.raises(ValueError, match="no masks"):
        decode_masks(synthetic(MaskFormat.NONE))
    assert decode_masks(synthetic(MaskFormat.NONE, n=0)).shape == (0, H, W)


def test_coco_results_convert_boxes_and_map_categories():
    det = synthetic()
    entries = coco_results(det, image_id=7, category_ids=[0, 17, 42])
    json.dumps(entries)  # JSON-ready: plain floats, ints and str
    assert [e["image_id"] for e in entries] == [7, 7, 7]
    assert [e["category_id"] for e in entries] == [17, 42, 17]
    assert entries[1]["bbox"] == [0.5, 1.25, 29.5, 20.75]  # x, y, w, h
    assert entries[0]["score"] == pytest.approx(0.9)
    for entry, mask in zip(entries, blobs(3)):
        seg = entry["segmentation"]
        assert seg["size"] == [H, W] and isinstance(seg["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(seg), mask)
    # a dense answer gives the same segmentations; no masks, no segmentation
    assert coco_results(synthetic(MaskFormat.DENSE), 7, [0, 17, 42]) == entries
    assert rle_strings(synthetic(MaskFormat.DENSE)) == rle_strings(det)
    assert all("segmentation" not in e for e in coco_results(synthetic(MaskFormat.NONE), 7, [0, 1, 2]))
    with pytest.raises(ValueError, match="class index 2 has no category id"):
        coco_results(det, 0, [0, 1])


def test_latency_summary_and_throughput():
    summary = latency_summary([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary.count == 100
    assert (summary.p50_ms, summary.p90_ms, summary.p99_ms) == pytest.approx((50.5, 90.1, 99.01))
    assert "p99 99.0 ms" in summary.line()
    empty = latency_summary([])
    assert empty.count == 0 and np.isnan(empty.p50_ms)
    assert throughput(10, 2.0) == 5.0 and throughput(0, 0.0) == 0.0


def test_differences_respect_tolerances():
    a = synthetic()
    b = Detections.from_arrays(answer(
        boxes=a.boxes + np.float32(1e-4), scores=a.scores, classes=a.classes,
        class_names=np.array([n.encode() for n in a.class_names], dtype=object),
        masks_rle=np.array(a.masks_rle, dtype=object), masks=a.masks, image_size=a.image_size))
    assert differences(a, b, box_atol=1e-3) == []
    assert differences(a, b) == ["boxes differ by up to 0.0001 (tolerance 0)"]
    assert differences(a, synthetic(n=2)) == ["3 detections != 2"]


# --------------------------------------------------------------------------- overlay
def test_overlay_draws_masks_boxes_labels_deterministically(tmp_path):
    det = synthetic(MaskFormat.DENSE, n=1)
    image = np.full((H, W, 3), 100, np.uint8)
    masks = np.zeros((1, H, W), np.uint8)
    masks[0, 14:20, 18:28] = 1
    out = draw_overlay(image, det, masks)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert (image == 100).all(), "the input image is left alone"
    np.testing.assert_array_equal(out, draw_overlay(image, det, masks))
    # inside the mask: blended toward the class colour; far from everything: untouched
    color = np.array(class_color(int(det.classes[0])))
    inside = out[17, 23].astype(int)
    assert np.abs(inside - color).sum() < np.abs(100 - color).sum()
    np.testing.assert_array_equal(out[H - 1, 0], [100, 100, 100])
    # boxes only, and grayscale input
    assert draw_overlay(image[:, :, 0], det, None).shape == (H, W, 3)
    with pytest.raises(ValueError, match="image is 10x31"):
        draw_overlay(image[:10], det, masks)
    path = write_png(tmp_path / "sub" / "x.overlay.png", out)
    np.testing.assert_array_equal(cv2.imread(str(path)), out)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), out)


def test_class_colours_are_stable_and_distinct():
    colors = [class_color(i) for i in range(20)]
    assert colors == [class_color(i) for i in range(20)]
    assert len(set(colors)) == 20


# --------------------------------------------------------------------------- cli pieces
def test_collect_images_expands_folders_sorted(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    (tmp_path / "extra").mkdir()
    other = tmp_path / "extra" / "other.bmp"
    other.write_bytes(b"x")
    assert [p.name for p in cli.collect_images([tmp_path, other])] == \
        ["a.JPG", "b.png", "c.webp", "other.bmp"]
    with pytest.raises(FileNotFoundError, match="missing"):
        cli.collect_images([tmp_path / "missing"])
    assert cli.main(["infer", str(tmp_path / "missing")]) == 2


def test_overlay_names_never_collide(tmp_path):
    paths = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "b.jpg"]
    assert cli.overlay_names(paths) == ["a.0.overlay.png", "a.1.overlay.png", "b.overlay.png"]


def test_only_unavailable_dead_stubs_and_refused_connections_are_retried_with_bounded_backoff():
    from tritonclient.utils import InferenceServerException

    assert cli.retryable(InferenceServerException("x", status="StatusCode.UNAVAILABLE"))
    assert cli.retryable(InferenceServerException("x", status="503"))
    assert cli.retryable(ConnectionRefusedError())
    dead = "Stub process 'pipeline_bls_0_1' is not healthy."  # Triton 2.51's own words
    assert cli.retryable(InferenceServerException(dead, status="StatusCode.INTERNAL"))
    assert cli.retryable(InferenceServerException(dead, status="500"))
    for status in ("StatusCode.INVALID_ARGUMENT", "400", "StatusCode.INTERNAL", "500",
                   "StatusCode.CANCELLED"):
        assert not cli.retryable(InferenceServerException("x", status=status)), status
    retry = cli.Retry(attempts=8, first_delay_s=0.25, max_delay_s=4.0)
    for attempt in range(8):
        ceiling = min(4.0, 0.25 * 2 ** attempt)
        assert ceiling / 2 <= retry.delay(attempt) <= ceiling

    class Flaky:  # UNAVAILABLE twice, then an answer; INVALID_ARG is never retried
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        async def infer(self, *args, **kwargs):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
            raise LookupError("answered")  # stands for the result; stops infer_one here

    model = cli.ServedModel(PIPELINE_NAME, True, 8, None)
    fast = cli.Retry(attempts=4, first_delay_s=0.001, max_delay_s=0.001)
    unavailable = InferenceServerException("busy", status="StatusCode.UNAVAILABLE")
    flaky, seen = Flaky([unavailable, unavailable]), []
    with pytest.raises(LookupError):
        asyncio.run(cli.infer_one(flaky, cli.client_module("grpc"), model, b"x", None, fast,
                                  seen.append))
    assert flaky.calls == 3 and seen == [unavailable, unavailable]
    wrong = Flaky([InferenceServerException("bad", status="StatusCode.INVALID_ARGUMENT")])
    with pytest.raises(InferenceServerException):
        asyncio.run(cli.infer_one(wrong, cli.client_module("grpc"), model, b"x", None, fast))
    assert wrong.calls == 1
    exhausted = Flaky([unavailable] * 4)
    with pytest.raises(InferenceServerException):
        asyncio.run(cli.infer_one(exhausted, cli.client_module("grpc"), model, b"x", None, fast))
    assert exhausted.calls == 4

    class Silent:  # a request the server lost: never answered
        calls = 0

        async def infer(self, *args, **kwargs):
            Silent.calls += 1
            await asyncio.sleep(60)

    with pytest.raises(TimeoutError, match=r"no answer within 0.05 s"):
        asyncio.run(cli.infer_one(Silent(), cli.client_module("grpc"), model, b"x", None, fast,
                                  timeout_s=0.05))
    assert Silent.calls == 1  # a timeout is not retried
    assert cli.parse_args(["infer", "x.jpg"]).timeout == 300.0


def test_arguments_defaults():
    assert cli.parse_args(["infer", "x"]).url == "127.0.0.1:8001"
    args = cli.parse_args(["infer", "x", "--protocol", "http"])
    assert (args.url, args.model, args.concurrency) == ("127.0.0.1:8000", PIPELINE_NAME, 2)
    assert cli.parse_args(["infer", "x", "--url", "http://h:1"]).url == "h:1"
    assert cli.request_parameters(None, 3, "none") == {"max_detections": 3, "mask_format": "none"}
    with pytest.raises(SystemExit):
        cli.parse_args(["infer", "x", "--concurrency", "0"])


# --------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def expected(reference, images) -> dict[str, Detections]:
    """The in-process pipeline's answer per test image (default options)."""
    return {name: Detections.from_arrays(reference(data)) for name, data in images.items()}


def write_images(folder, images, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or images:
        (folder / name).write_bytes(images[name])
    return folder


def load_run(out):
    entries = json.loads((out / cli.RESULTS_FILE).read_text())
    listed = json.loads((out / cli.IMAGES_FILE).read_text())
    by_id = {image["id"]: image for image in listed}
    per_image = {}
    for entry in entries:
        per_image.setdefault(by_id[entry["image_id"]]["file_name"], []).append(entry)
    return listed, per_image


def check_entries(entries, det: Detections, meta):
    """COCO entries of one image against the reference's Detections."""
    height, width = det.image_size
    assert len(entries) == len(det)
    assert [e["category_id"] for e in entries] == [meta.category_ids[c] for c in det.classes]
    assert all(e["category_id"] in meta.category_ids for e in entries)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (e["bbox"] for e in entries)])
    np.testing.assert_allclose(boxes.reshape(-1, 4), det.boxes, atol=1e-3)
    np.testing.assert_allclose([e["score"] for e in entries], det.scores, atol=1e-4)
    for entry, want in zip(entries, decode_masks(det)):
        if "segmentation" not in entry:
            continue
        got = mask_utils.decode(entry["segmentation"])
        assert got.shape == (height, width)
        union = np.logical_or(got, want).sum()
        assert union == 0 or np.logical_and(got, want).sum() / union >= 0.95


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_over_a_folder_matches_the_reference(protocol, server, exported, images, expected,
                                                 tmp_path, capsys):
    folder = write_images(tmp_path / "images", images)
    out = tmp_path / "out"
    url = server.http_url if protocol == "http" else server.grpc_url
    rc = cli.main(["infer", str(folder), "--url", url, "--protocol", protocol,
                   "--concurrency", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert f"images: {len(images)} ok, 0 failed" in printed
    assert "latency p50" in printed and "img/s" in printed
    listed, per_image = load_run(out)
    assert [image["file_name"] for image in listed] == [str(folder / n) for n in sorted(images)]
    assert sum(len(d) for d in expected.values()) > 0, "no detections: the test checks nothing"
    for image in listed:
        name = image["file_name"].rsplit("/", 1)[-1]
        det = expected[name]
        assert (image["height"], image["width"]) == det.image_size
        check_entries(per_image.get(image["file_name"], []), det, exported.meta)
        overlay = cv2.imread(str(out / f"{name.rsplit('.', 1)[0]}.overlay.png"))
        assert overlay is not None and overlay.shape == (*det.image_size, 3)


@pytest.mark.server
def test_every_mask_format_writes_the_same_results_and_overlays(server, images, tmp_path):
    """rle, box and polygon answers of one image give the same results.json and
    overlays of the same size."""
    folder = write_images(tmp_path / "images", images, ["scene.jpg"])
    runs = {}
    for fmt in ("rle", "box", "polygon"):
        out = tmp_path / fmt
        assert cli.main(["infer", str(folder), "--url", server.grpc_url, "--mask-format", fmt,
                         "--score-threshold", "0", "--out", str(out)]) == 0
        _, per_image = load_run(out)
        [entries] = per_image.values()
        runs[fmt] = [mask_utils.decode(e["segmentation"]).astype(bool) for e in entries]
        overlay = cv2.imread(str(out / "scene.overlay.png"))
        assert overlay is not None and overlay.shape == (240, 320, 3)
    assert len(runs["rle"]) > 0
    for want, box, polygon in zip(runs["rle"], runs["box"], runs["polygon"]):
        np.testing.assert_array_equal(box, want)
        np.testing.assert_array_equal(polygon, want)


@pytest.mark.server
def test_ensemble_with_dense_masks_matches_the_reference(server, exported, images, expected,
                                                         tmp_path):
    """infer_pipeline has no batch dim; dense masks are re-encoded for results.json."""
    name = "scene.jpg"
    folder = write_images(tmp_path / "images", images, [name])
    out = tmp_path / "out"
    rc = cli.main(["infer", str(folder / name), "--url", server.grpc_url, "--model",
                   ENSEMBLE_NAME, "--mask-format", "dense", "--no-overlay", "--out", str(out)])
    assert rc == 0
    _, per_image = load_run(out)
    check_entries(per_image[str(folder / name)], expected[name], exported.meta)
    assert all("segmentation" in e for e in per_image[str(folder / name)])
    assert not list(out.glob("*.png"))


@pytest.mark.server
def test_request_parameters_reach_the_server(server, reference, images):
    data = images["scene.jpg"]
    params = {"score_threshold": 0.6, "max_detections": 2, "mask_format": "none"}
    got = asyncio.run(cli.infer_bytes(server.http_url, "http", PIPELINE_NAME, data, params))
    want = Detections.from_arrays(reference(data, RequestOptions(0.6, 2, MaskFormat.NONE)))
    assert differences(got, want, box_atol=1e-3, score_atol=1e-4) == []
    assert len(got) <= 2 and not got.masks_rle and len(got.masks) == 0


@pytest.mark.server
def test_a_corrupt_image_fails_alone(server, images, expected, tmp_path, capsys):
    good = ["gray.png", "scene.jpg"]
    folder = write_images(tmp_path / "images", images, good)
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    out = tmp_path / "out"
    rc = cli.main(["infer", str(folder), "--url", server.grpc_url, "--concurrency", "2",
                   "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 1
    failed = [line for line in printed.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1
    assert "broken.jpg" in failed[0] and f"input '{PIPELINE_INPUT.name}'" in failed[0]
    assert "images: 2 ok, 1 failed" in printed
    listed, per_image = load_run(out)
    errors = {image["file_name"]: image.get("error") for image in listed}
    assert f"input '{PIPELINE_INPUT.name}'" in errors[str(folder / "broken.jpg")]
    for name in good:
        assert errors[str(folder / name)] is None
        assert len(per_image.get(str(folder / name), [])) == len(expected[name])
        assert (out / f"{name.rsplit('.', 1)[0]}.overlay.png").is_file()
    assert not (out / "broken.overlay.png").exists()


def test_statistics_sum_versions_and_give_per_request_means():
    # The gRPC client's JSON writes 64-bit counts as strings, the HTTP client's as numbers.
    def reply(success, fail, ns, executions, inferences, version="1"):
        return {"name": "m", "version": version, "execution_count": str(executions),
                "inference_count": inferences, "inference_stats": {
                    "success": {"count": str(success), "ns": ns}, "fail": {"count": fail},
                    "queue": {"count": success, "ns": 1_000_000 * success},
                    "compute_infer": {"ns": 3_000_000 * success},
                    "compute_output": {"ns": 1_000_000 * success}}}

    before = statistics.per_model({"model_stats": [reply(2, 0, 20_000_000, 2, 2)]})
    after = statistics.per_model({"model_stats": [reply(6, 1, 60_000_000, 4, 6),
                                                  reply(4, 1, 40_000_000, 2, 4, "2")]})
    assert after["m"]["success"] == 10 and after["m"]["fail"] == 2  # both versions
    assert after["m"]["compute_ns"] == 40_000_000
    got = statistics.delta(before, after, ["m", "absent"])
    assert got["m"] == {"requests": 10, "failed": 2, "executions": 4, "queue_ms": 0.8,
                        "compute_ms": 3.2, "total_ms": 10.0, "batch": 2.0}
    assert got["absent"] == {"requests": 0, "failed": 0, "executions": 0, "queue_ms": 0.0,
                             "compute_ms": 0.0, "total_ms": 0.0, "batch": 0.0}
