"""The Detectron2 export: the served pipeline against detectron2's own DefaultPredictor.

detectron2 is not on PyPI and not in requirements.txt: the tests that need it skip with
the reason where it is missing and run where it is installed (docs/detectron2.md). The
device-portability check and the command line without detectron2 are tested everywhere.

Models: detectron2's model-zoo R50-FPN configs at 256-384 px with few proposals, weights
from `python -m export detectron2-checkpoint` (seeded random initialisation, rescaled so
scores and masks are decisive; no weights are downloaded). MODEL.ROI_HEADS.SCORE_THRESH_TEST
is 0 on both sides and requests ask score_threshold=0, so every detection is compared.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MODEL_INPUT, model_output, model_outputs
from bls.pipeline.steps import Pipeline, prepare
from export import samples
from export.detectron2_devices import hardcoded_cuda, host_device_mixing

HAS_D2 = importlib.util.find_spec("detectron2") is not None
MISSING = ("detectron2 is not installed (not on PyPI; build it from source as "
           "docs/detectron2.md says): its export and parity tests run where it is")
# Under CI (.ci/run builds it from ../shared/vendor) a missing detectron2 is a failure.
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
needs_d2 = pytest.mark.skipif(not HAS_D2 and not IN_CI, reason=MISSING)
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine: the GPU export is verified and served where one is")

MASK_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
BOX_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
SMALL = ["INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384",
         "MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
         "TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
ALL = RequestOptions(score_threshold=0.0)


def run_cli(args: list[str]) -> tuple[int, str]:
    from export.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(args)
    return rc, out.getvalue()


# --------------------------------------------------------------------------- no detectron2
BLOCK_D2 = ("import sys, runpy; sys.modules['detectron2'] = None; "
            "sys.argv = ['export'] + sys.argv[1:]; runpy.run_module('export', run_name='__main__')")


@pytest.mark.parametrize("command", ["detectron2", "detectron2-checkpoint", "parity"])
def test_help_needs_no_detectron2(command):
    result = subprocess.run([sys.executable, "-c", BLOCK_D2, command, "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_export_without_detectron2_says_how_to_install(tmp_path, monkeypatch, capsys):
    from export.__main__ import main

    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    rc = main(["detectron2", "--config", MASK_CONFIG, "--repository", str(tmp_path / "repo")])
    assert rc == 2
    assert "docs/detectron2.md" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


# --------------------------------------------------------------------------- device check
class _PadLikeFromTensors(nn.Module):
    """What ImageList.from_tensors does while traced: sizes stacked from the traced
    shape (CPU), rounded up with constants that load onto the serving device."""

    def forward(self, x):
        size = torch.stack([x.shape[-2], x.shape[-1]])  # traced sizes are 0-dim tensors
        padded = (size + 31).div(32, rounding_mode="floor") * 32
        return nn.functional.pad(x, [0, padded[1] - size[1], 0, padded[0] - size[0]])


@torch.jit.script_if_tracing
def _pad_scripted(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    return nn.functional.pad(x, [0, (w + 31) // 32 * 32 - w, 0, (h + 31) // 32 * 32 - h])


class _PadScripted(nn.Module):
    def forward(self, x):
        return _pad_scripted(x)


class _ArangeOnTraceDevice(nn.Module):
    """torch.arange(..., device=x.device): the tracer records the device as a constant."""

    def forward(self, x):
        return x + torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)


@torch.jit.script_if_tracing
def _move_like(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    return src.to(dst.device)


class _ArangeMoved(nn.Module):
    """The detectron2 way (move_device_like): made on the CPU, moved where x is at run time."""

    def forward(self, x):
        return x + _move_like(torch.arange(x.shape[-1], dtype=x.dtype), x)


def _traced_graph(module, x):
    with torch.no_grad():
        return torch.jit.trace(module, (x,), check_trace=False).inlined_graph


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_device_check_finds_host_tensors_that_meet_moved_constants():
    x = torch.zeros(3, 50, 70)
    problems = host_device_mixing(_traced_graph(_PadLikeFromTensors(), x))
    assert problems and "mixes a host tensor" in problems[0]
    assert "1-dim" in problems[0]
    assert host_device_mixing(_traced_graph(_PadScripted(), x)) == []
    problems = host_device_mixing(_traced_graph(_ArangeOnTraceDevice(), x))
    assert len(problems) == 1 and "aten::add" in problems[0]
    assert host_device_mixing(_traced_graph(_ArangeMoved(), x)) == []


def test_hardcoded_cuda_device_is_found(tmp_path):
    @torch.jit.script
    def to_gpu(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.device("cuda:0"))

    class M(nn.Module):
        def forward(self, x):
            return to_gpu(x) if x.numel() < 0 else x

    path = tmp_path / "m.pt"
    torch.jit.script(M()).save(str(path))
    found = hardcoded_cuda(path)
    assert found and "cuda:0" in found[0]
    torch.jit.script(_PadScripted()).save(str(path))
    assert hardcoded_cuda(path) == []


# --------------------------------------------------------------------------- with detectron2
@pytest.fixture(scope="module")
def d2():
    if not HAS_D2:
        if IN_CI:
            pytest.fail(f"CI: {MISSING}; .ci/run builds it from ../shared/vendor")
        pytest.skip(MISSING)
    from export import detectron2_maskrcnn

    return detectron2_maskrcnn


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("detectron2")


@pytest.fixture(scope="module")
def mask_cfg(d2):
    return d2.load_config(MASK_CONFIG, SMALL)


@pytest.fixture(scope="module")
def mask_weights(d2, mask_cfg, workdir) -> Path:
    return d2.write_test_checkpoint(mask_cfg, workdir / "mask_rcnn_calibrated.pth", seed=0)


@pytest.fixture(scope="module")
def mask_export(d2, mask_weights, workdir):
    """The real command line: traced (the default), CPU."""
    from export.torchscript import read_metadata

    repository = workdir / "repository"
    rc, out = run_cli(["detectron2", "--config", MASK_CONFIG, "--opts", *SMALL,
                       "--weights", str(mask_weights), "--repository", str(repository)])
    assert rc == 0, out
    model_file = repository / "mask_rcnn" / "1" / "model.pt"
    return repository, model_file, read_metadata(model_file), out


def torchscript_call(model_file: Path, meta):
    module = torch.jit.load(str(model_file), map_location="cpu")
    names = [s.name for s in meta.outputs]

    def call(model_input: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = module(torch.from_numpy(np.ascontiguousarray(model_input)))
        return {n: t.numpy() for n, t in zip(names, outputs)}

    return call


def generated_files(folder: Path, count: int) -> list[Path]:
    from export.detectron2_parity import generate_images

    folder.mkdir(parents=True, exist_ok=True)
    return generate_images(folder, count)


def in_process_parity(meta, model_file: Path, cfg, weights: Path, paths: list[Path]):
    """bls Pipeline over the exported file (what pipeline_bls runs) vs DefaultPredictor."""
    from client.results import Detections
    from export import detectron2_parity as parity

    pipeline = Pipeline(meta, torchscript_call(model_file, meta))
    predictor = parity.predictor(cfg, weights)
    rows = []
    for path in paths:
        served = Detections.from_arrays(pipeline(path.read_bytes(), ALL))
        rows.append(parity.compare(path.name, served, parity.reference_answer(predictor, path)))
    return rows


@needs_d2
def test_export_reads_what_the_pipeline_needs_from_the_config(mask_export, mask_cfg, mask_weights, d2):
    _, _, meta, out = mask_export
    assert meta.channel_order == "BGR"  # INPUT.FORMAT
    assert (meta.min_size, meta.max_size) == (256, 384)  # MIN_SIZE_TEST, MAX_SIZE_TEST
    assert meta.mask_resolution == 28
    assert len(meta.class_names) == 80 and meta.class_names[:3] == ("person", "bicycle", "car")
    assert meta.category_ids[:3] == (1, 2, 3) and meta.category_ids[-1] == 90  # COCO ids
    assert meta.score_threshold == 0.0  # SCORE_THRESH_TEST: by default, DefaultPredictor's answer
    assert meta.extra["method"] == "trace" and meta.device == "cpu"
    assert meta.extra["config_sha256"] == d2.config_digest(mask_cfg)
    assert meta.extra["weights_sha256"] == d2.file_digest(mask_weights)
    assert meta.torch_version == torch.__version__.split("+")[0]
    # what the export printed: the trace checked against detectron2's own inference
    assert "device check: no CPU-only tensor meets" in out
    assert out.count("traced vs eager detectron2") == 2 and "MISMATCH" not in out
    assert "max |diff|" in out and "torch rule:" in out


@needs_d2
def test_pipeline_feeds_the_model_what_default_predictor_feeds(d2, workdir):
    """The model input bls.prepare makes from the bytes equals the tensor DefaultPredictor
    hands its model after read_image (PIL, EXIF) + ResizeShortestEdge, bit for bit, for
    BGR and RGB models and sizes that round either way."""
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    images = {"landscape.jpg": samples.scene(333, 517, seed=1),
              "portrait.png": samples.scene(517, 333, seed=2),
              "small.png": samples.scene(61, 47, seed=3),
              "wide.jpg": samples.scene(120, 900, seed=4),
              "gray.png": samples.scene(200, 260, seed=5)[:, :, 1]}
    folder = workdir / "feed"
    folder.mkdir(exist_ok=True)
    for fmt, sizes in (("BGR", ("256", "384")), ("RGB", ("300", "500"))):
        cfg = d2.load_config(MASK_CONFIG, ["INPUT.FORMAT", fmt, "INPUT.MIN_SIZE_TEST", sizes[0],
                                           "INPUT.MAX_SIZE_TEST", sizes[1]])
        meta = d2.metadata(cfg, MASK_CONFIG, "test", "trace", "cpu")
        predictor = DefaultPredictor(cfg)
        fed = []
        predictor.model = lambda batch: fed.append(batch[0]["image"]) or [{}]
        for name, image in images.items():
            path = folder / name
            path.write_bytes(samples.encode(image, path.suffix))
            predictor(read_image(str(path), format="BGR"))
            ours = prepare(path.read_bytes(), meta).model_input
            assert fed[-1].dtype == torch.float32
            assert torch.equal(fed[-1], torch.from_numpy(ours).float()), (fmt, name)


@needs_d2
def test_traced_export_equals_default_predictor_in_process(mask_export, mask_cfg, mask_weights, workdir):
    _, model_file, meta, _ = mask_export
    rows = in_process_parity(meta, model_file, mask_cfg, mask_weights,
                             generated_files(workdir / "gen", 3))
    for row in rows:
        assert row.served > 0 and row.ok, row


@needs_d2
@pytest.mark.server
def test_served_pipeline_equals_default_predictor(mask_export, mask_cfg, mask_weights, workdir, d2):
    """The parity command's comparison against the real embedded server."""
    from export import detectron2_parity as parity
    from server.launcher import TritonServer

    repository, _, _, _ = mask_export
    paths = generated_files(workdir / "served", 4)
    with TritonServer(repository, extra_args=("--python", sys.executable)) as server:
        report = parity.compare_served(server.grpc_url, "grpc", mask_cfg, mask_weights, paths,
                                       log=lambda line: None)
        print("\n".join(report.lines()))
        assert report.ok, report.lines()
        assert all(r.served == r.reference > 0 for r in report.rows)
        # by default (no score_threshold) the pipeline answers what DefaultPredictor answers
        http_report = parity.compare_served(server.http_url, "http", mask_cfg, mask_weights,
                                            paths[:1], score_threshold=meta_threshold(mask_export),
                                            log=lambda line: None)
        assert http_report.ok
        # another config or other weights: refused, not compared
        other = d2.load_config(MASK_CONFIG, SMALL[:-2] + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5"])
        with pytest.raises(ValueError, match="config"):
            parity.compare_served(server.grpc_url, "grpc", other, mask_weights, paths[:1])


def meta_threshold(mask_export) -> float:
    return mask_export[2].score_threshold


@needs_d2
def test_detectron2_own_trace_is_flagged_and_ours_is_not(d2, mask_cfg, mask_weights):
    """detectron2's TracingAdapter over model.inference (ImageList.from_tensors) mixes CPU
    shape tensors with constants that load onto the GPU: the failure seen in Triton.
    traceable_inference computes the same values without it."""
    from detectron2.export import TracingAdapter

    model, _ = d2.build(mask_cfg, mask_weights)
    image = torch.from_numpy(prepare(samples.encode(samples.scene(240, 320, seed=9)),
                                     d2.metadata(mask_cfg, MASK_CONFIG, "", "trace", "cpu")
                                     ).model_input)

    def plain(m, img):
        return m.inference([{"image": img.float()}], do_postprocess=False)[0]

    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
        theirs = torch.jit.trace(TracingAdapter(model, (image,), plain), (image,), check_trace=False)
    problems = host_device_mixing(theirs.inlined_graph)
    assert problems and any("image_list.py" in p for p in problems), problems
    ours = d2.trace(model, image, has_masks=True, log=lambda line: None)
    assert host_device_mixing(ours.inlined_graph) == []
    with torch.inference_mode():
        for a, b in zip(theirs(image), ours(image)):
            assert torch.equal(a, b)


@needs_d2
def test_scripted_export_equals_default_predictor(d2, mask_cfg, mask_weights, workdir):
    model, desc = d2.build(mask_cfg, mask_weights)
    meta = d2.metadata(mask_cfg, MASK_CONFIG, desc, "script", "cpu", weights=mask_weights)
    out = workdir / "scripted" / "model.pt"
    lines = []
    verified = d2.export(model, meta, out, "script", log=lines.append)
    assert all(v.ok and v.detections > 0 for v in verified)
    assert sum("scripted vs eager detectron2" in line for line in lines) == 2
    assert hardcoded_cuda(out) == []
    rows = in_process_parity(meta, out, mask_cfg, mask_weights, generated_files(workdir / "gen", 2))
    assert all(r.ok and r.served > 0 for r in rows), rows


@needs_d2
def test_scripted_file_loads_in_the_embedded_runner(d2, mask_cfg, mask_weights, workdir):
    from bls.testing import TritonDouble, model_config_dict
    from export.repository import assemble
    from export.torchscript import read_metadata

    out = workdir / "scripted" / "model.pt"
    if not out.exists():
        model, desc = d2.build(mask_cfg, mask_weights)
        d2.export(model, d2.metadata(mask_cfg, MASK_CONFIG, desc, "script", "cpu"), out, "script",
                  log=lambda line: None)
    repo = assemble(out, workdir / "scripted_repository")
    double = TritonDouble({})
    with double.installed():
        runner = double.load_model(
            repo / "mask_rcnn", model_config_dict(repo / "mask_rcnn" / "configs" / "embedded.pbtxt"))
        meta = read_metadata(out)
        model_input = prepare(samples.encode(samples.scene(200, 260, seed=4)), meta).model_input
        [served] = double.execute(runner, [double.request({MODEL_INPUT.name: model_input})])
    assert not served.has_error(), served.error()
    got = {t.name(): t.as_numpy() for t in served.output_tensors()}
    expected = torchscript_call(out, meta)(model_input)
    assert list(got) == [s.name for s in meta.outputs] == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


@needs_d2
def test_faster_rcnn_exports_boxes_only_and_matches_default_predictor(d2, workdir):
    from client.results import Detections

    cfg = d2.load_config(BOX_CONFIG, SMALL)
    weights = d2.write_test_checkpoint(cfg, workdir / "faster_rcnn.pth", seed=1)
    repository = workdir / "box_repository"
    rc, out = run_cli(["detectron2", "--config", BOX_CONFIG, "--opts", *SMALL,
                       "--weights", str(weights), "--repository", str(repository)])
    assert rc == 0, out
    assert "boxes only, no masks" in out
    from export.torchscript import read_metadata

    model_file = repository / "mask_rcnn" / "1" / "model.pt"
    meta = read_metadata(model_file)
    assert meta.mask_resolution is None and meta.outputs == model_outputs(None)
    assert [s.name for s in meta.outputs] == ["boxes__0", "classes__1", "scores__2", "image_size__3"]
    rows = in_process_parity(meta, model_file, cfg, weights, generated_files(workdir / "gen", 2))
    assert all(r.ok and r.served > 0 and r.min_mask_iou is None for r in rows), rows
    answer = Detections.from_arrays(Pipeline(meta, torchscript_call(model_file, meta))(
        samples.encode(samples.scene(240, 320, seed=1)), ALL))
    assert len(answer) > 0 and len(answer.masks_rle) == 0 and len(answer.masks) == 0


@needs_d2
def test_mismatching_export_is_refused_and_nothing_written(d2, mask_cfg, mask_weights, workdir,
                                                           monkeypatch):
    original = d2.traceable_inference

    def diverging(model, image):
        inst = original(model, image)
        inst.pred_boxes.tensor = inst.pred_boxes.tensor + 0.5
        return inst

    monkeypatch.setattr(d2, "traceable_inference", diverging)
    model, desc = d2.build(mask_cfg, mask_weights)
    out = workdir / "refused" / "model.pt"
    lines = []
    with pytest.raises(d2.ExportMismatch, match="nothing was written"):
        d2.export(model, d2.metadata(mask_cfg, MASK_CONFIG, desc, "trace", "cpu"), out,
                  images=[samples.encode(samples.scene(200, 260, seed=4))], log=lines.append)
    assert not out.exists() and not list(out.parent.glob("*"))
    report = "\n".join(lines)
    assert model_output(model_outputs(None), "boxes").name in report and "max |diff| 0.5" in report and "MISMATCH" in report


@needs_d2
def test_refusals_name_the_offending_values(d2, mask_cfg, workdir):
    with pytest.raises(d2.UnsupportedModel, match="MODEL.META_ARCHITECTURE='RetinaNet'"):
        d2.check_supported(d2.load_config("COCO-Detection/retinanet_R_50_FPN_3x.yaml"))
    with pytest.raises(d2.UnsupportedModel, match="KEYPOINT_ON"):
        d2.check_supported(d2.load_config("COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"))
    with pytest.raises(d2.UnsupportedModel, match="INPUT.MIN_SIZE_TEST=0"):
        d2.check_supported(d2.load_config(MASK_CONFIG, ["INPUT.MIN_SIZE_TEST", "0"]))
    with pytest.raises(FileNotFoundError, match="no model-zoo config"):
        d2.load_config("COCO-InstanceSegmentation/no_such.yaml")
    with pytest.raises(FileNotFoundError, match="not a local file"):
        d2.build(mask_cfg, Path("detectron2://ImageNetPretrained/MSRA/R-50.pkl"))
    # a Faster R-CNN checkpoint lacks the mask head of this config
    box_cfg = d2.load_config(BOX_CONFIG, SMALL)
    box_model, _ = d2.build(box_cfg)
    path = workdir / "box_state.pth"
    torch.save({"model": box_model.state_dict()}, path)
    with pytest.raises(ValueError, match="mask_head"):
        d2.build(mask_cfg, path)
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        d2.load_config(MASK_CONFIG, ["INPUT.MIN_SIZE_TEST"])


@needs_d2
def test_torch_rule_is_checked(d2, mask_weights, workdir):
    ours, theirs, loads = d2.torch_rule("2.6.0")
    assert theirs == "2.6.0" and loads == (tuple(map(int, ours.split(".")[:3])) <= (2, 6, 0))
    assert d2.torch_rule("99.0.0")[2]
    if not loads:  # this torch is newer than the container's: a declared target refuses
        rc, out = run_cli(["detectron2", "--config", MASK_CONFIG, "--opts", *SMALL,
                           "--weights", str(mask_weights), "--serving-torch", "2.6.0",
                           "--repository", str(workdir / "never")])
        assert rc == 1 and "TOO OLD" in out
        assert not (workdir / "never").exists()


@needs_d2
def test_gpu_target_is_refused_without_a_gpu(d2, mask_cfg, workdir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: test_gpu_export_is_served covers it")
    model, desc = d2.build(mask_cfg)
    with pytest.raises(d2.TargetUnavailable, match="no CUDA device"):
        d2.export(model, d2.metadata(mask_cfg, MASK_CONFIG, desc, "trace", "cuda"),
                  workdir / "gpu" / "model.pt", devices=("cpu", "cuda"))
    assert not (workdir / "gpu").exists()
    rc, _ = run_cli(["detectron2", "--config", MASK_CONFIG, "--device", "cuda",
                     "--repository", str(workdir / "gpu_repository")])
    assert rc == 1 and not (workdir / "gpu_repository").exists()


@needs_d2
@needs_cuda
@pytest.mark.server
@pytest.mark.parametrize("method", ["trace", "script"])
def test_gpu_export_is_served(method, mask_cfg, mask_weights, workdir):
    """Export for the GPU (traced on the CPU, verified on the GPU), serve mask_rcnn on a
    GPU instance of the embedded server, and compare with DefaultPredictor."""
    from export import detectron2_parity as parity
    from server.launcher import TritonServer

    repository = workdir / f"gpu_{method}"
    rc, out = run_cli(["detectron2", "--config", MASK_CONFIG, "--opts", *SMALL, "--method", method,
                       "--device", "cuda", "--weights", str(mask_weights),
                       "--repository", str(repository),
                       "--set", "mask_rcnn=instance_group [ { count: 1, kind: KIND_GPU } ]"])
    assert rc == 0, out
    assert "on cuda:" in out
    with TritonServer(repository, extra_args=("--python", sys.executable)) as server:
        report = parity.compare_served(server.grpc_url, "grpc", mask_cfg, mask_weights,
                                       generated_files(workdir / f"gpu_{method}_images", 3))
    assert report.ok, report.lines()
