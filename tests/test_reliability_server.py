"""Bad input, faults and stops on the real embedded server: every kind of input gets an
answer or a clear INVALID_ARG naming it, in one batch; tensor-level mistakes are refused
by name; a killed mask_rcnn or monitoring process, a raising mask_rcnn and a cancelled
request are survived (see docs/reliability.md; stops: test_stops_server.py)."""

import io
import json
import os
import queue
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from bls.contract.parameters import RequestOptions
from bls.contract.tensors import MODEL_NAME, MONITORING_NAME, PIPELINE_INPUT, PIPELINE_NAME
from export import samples
from export.repository import assemble, parameters_override
from server.launcher import TritonServer
from server.processes import stubs

pytestmark = pytest.mark.server


def pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_rotated(array: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return pil_bytes(Image.fromarray(array), "JPEG", quality=90, exif=exif.tobytes())


def bomb(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def inputs_to_try() -> tuple[dict, dict]:
    """(good: name -> bytes, bad: name -> (bytes, parameters, expected message))."""
    rgb = samples.scene(180, 240, seed=4)[:, :, ::-1].copy()  # RGB for PIL
    image = Image.fromarray(rgb)
    jpeg = pil_bytes(image, "JPEG", quality=90)
    good = {
        "grayscale.png": pil_bytes(image.convert("L"), "PNG"),
        "rgba.png": pil_bytes(image.convert("RGBA"), "PNG"),
        "palette.png": pil_bytes(image.convert("P"), "PNG"),
        "16bit.png": pil_bytes(Image.fromarray(
            (np.asarray(image.convert("L")).astype(np.uint16) * 257)), "PNG"),
        "cmyk.jpg": pil_bytes(image.convert("CMYK"), "JPEG", quality=90),
        "progressive.jpg": pil_bytes(image, "JPEG", quality=90, progressive=True),
        "exif_rotated.jpg": exif_rotated(rgb),
        "gif.gif": pil_bytes(image.convert("P"), "GIF"),
        "tiff.tif": pil_bytes(image, "TIFF"),
        "webp.webp": pil_bytes(image, "WEBP", quality=90),
        "bmp.bmp": pil_bytes(image, "BMP"),
        "1px_wide.png": pil_bytes(image.crop((0, 0, 1, 180)), "PNG"),
        "large_photo.jpg": pil_bytes(image.resize((4000, 3000)), "JPEG", quality=85),
    }
    cannot = "pipeline_bls: input 'image': cannot be decoded"
    bad = {
        "truncated.jpg": (jpeg[:len(jpeg) // 2], None, cannot),
        "random_bytes": (bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8)), None, cannot),
        "empty": (b"", None, "pipeline_bls: input 'image': is empty"),
        "text": (b"Hello, this is text, not an image.", None, cannot),
        "bomb.png": (bomb(50_000, 50_000), None,
                     "pipeline_bls: input 'image': declares 2500000000 pixels, over the limit of 64000000"),
        "negative threshold": (jpeg, {"score_threshold": -0.1},
                               "pipeline_bls: parameter 'score_threshold': must be in [0, 1], got -0.1"),
        "threshold over 1": (jpeg, {"score_threshold": 1.5},
                             "pipeline_bls: parameter 'score_threshold': must be in [0, 1], got 1.5"),
        "unknown mask format": (jpeg, {"mask_format": "svg"},
                                "pipeline_bls: parameter 'mask_format': must be one of"),
        "huge max detections": (jpeg, {"max_detections": 10**9},
                                "pipeline_bls: parameter 'max_detections': must be in [0, 1000]"),
    }
    return good, bad


def image_tensor(data: bytes):
    tensor = grpcclient.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
    tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    return tensor


def assert_same(result, expected):
    assert result.as_numpy("classes")[0].tolist() == expected["classes"].tolist()
    np.testing.assert_allclose(result.as_numpy("boxes")[0], expected["boxes"], atol=1e-3, rtol=0)
    assert result.as_numpy("masks_rle")[0].tolist() == expected["masks_rle"].tolist()
    assert result.as_numpy("image_size")[0].tolist() == expected["image_size"].tolist()


def test_every_kind_of_input_in_one_batch_answers_or_names_the_problem(server, reference):
    good, bad = inputs_to_try()
    requests = [(name, data, {"score_threshold": 0.0}) for name, data in good.items()]
    requests += [(name, data, params) for name, (data, params, _) in bad.items()]
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for name, data, params in requests:  # all in flight together: batched together
            client.async_infer(PIPELINE_NAME, [image_tensor(data)], parameters=params,
                               callback=lambda result, error, name=name: answers.put((name, result, error)))
        got = {name: (result, error) for name, result, error in
               (answers.get(timeout=600) for _ in requests)}
        for name, data in good.items():
            result, error = got[name]
            assert error is None, f"{name}: {error}"
            assert_same(result, reference(data, RequestOptions(0.0)))
        for name, (_, _, message) in bad.items():
            result, error = got[name]
            assert result is None and message in error.message(), f"{name}: {error}"
            assert error.status() == "StatusCode.INVALID_ARGUMENT", name
        assert client.is_server_ready() and client.is_model_ready(PIPELINE_NAME)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tensor_level_mistakes_are_refused_by_name(server, images, protocol):
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    data = images["scene.jpg"]

    def tensor(name, shape, dtype, value):
        t = module.InferInput(name, shape, dtype)
        t.set_data_from_numpy(value)
        return t

    cases = {
        "two images in one request": ([tensor("image", [1, 2], "BYTES",
                                              np.array([[data, data]], dtype=object))], "image"),
        "floats instead of bytes": ([tensor("image", [1, 1], "FP32",
                                            np.zeros((1, 1), np.float32))], "image"),
        "no input": ([], "input"),
        "an extra input": ([tensor("image", [1, 1], "BYTES", np.array([[data]], dtype=object)),
                            tensor("extra", [1, 1], "BYTES", np.array([[b"x"]], dtype=object))],
                           "extra"),
    }
    with module.InferenceServerClient(url) as client:
        for case, (inputs, named) in cases.items():
            with pytest.raises(InferenceServerException) as info:
                client.infer(PIPELINE_NAME, inputs)
            assert named in info.value.message(), f"{case}: {info.value.message()}"
        assert client.is_server_ready()
        assert client.infer(PIPELINE_NAME, cases["an extra input"][0][:1]).as_numpy("scores") is not None


def test_a_cancelled_request_leaves_the_server_serving(server, images):
    outcome: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        context = client.async_infer(PIPELINE_NAME, [image_tensor(images["tall.png"])],
                                     callback=lambda result, error: outcome.put(error))
        context.cancel()
        error = outcome.get(timeout=120)
        assert error is not None and "cancel" in error.message().lower()
        result = client.infer(PIPELINE_NAME, [image_tensor(images["scene.jpg"])])
        assert result.as_numpy("scores") is not None


# --------------------------------------------------------------------------- faults
@pytest.fixture(scope="module")
def supervised(exported, tmp_path_factory):
    """A server as run_triton.sh runs it by default (watchdog on), every request monitored."""
    repository = assemble(exported.model_file, tmp_path_factory.mktemp("faults") / "repository", {
        PIPELINE_NAME: parameters_override(monitoring_policy=json.dumps({"sample_rate": 1.0}))})
    with TritonServer(repository) as running:
        yield running


class Load:
    """Sequential requests in a thread until stopped; every outcome recorded in order."""

    def __init__(self, server, data: bytes):
        self.server, self.data = server, data
        self.outcomes: list[tuple[float, object, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with grpcclient.InferenceServerClient(self.server.grpc_url) as client:
            while not self._stop.is_set():
                try:
                    result = client.infer(PIPELINE_NAME, [image_tensor(self.data)],
                                          parameters={"score_threshold": 0.0})
                    self.outcomes.append((time.monotonic(), result, None))
                except InferenceServerException as e:
                    self.outcomes.append((time.monotonic(), None, f"{e.status()} {e.message()}"))
                    time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=300)


def kill_stub(server, model: str) -> int:
    [pid] = stubs(server.tritonserver_pid)[model]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_killed_mask_rcnn_fails_clearly_then_recovers_without_restart(supervised, reference, images):
    data = images["scene.jpg"]
    expected = reference(data, RequestOptions(0.0))
    with Load(supervised, data) as load:
        while not load.outcomes:
            time.sleep(0.1)
        killed_at = time.monotonic()
        kill_stub(supervised, MODEL_NAME)
        deadline = time.monotonic() + 240
        while not any(t > killed_at and error is not None for t, _, error in load.outcomes) or \
                not (load.outcomes[-1][2] is None and load.outcomes[-1][0] > killed_at):
            assert time.monotonic() < deadline, load.outcomes[-5:]
            time.sleep(0.5)
    after = [(t, result, error) for t, result, error in load.outcomes if t > killed_at]
    errors = [error for _, _, error in after if error]
    # UNAVAILABLE: the request was fine, its model could not serve it (retry elsewhere)
    assert errors and all(e.startswith("StatusCode.UNAVAILABLE pipeline_bls: mask_rcnn is "
                                       "unavailable: ") for e in errors), errors
    first_ok = next(i for i, (_, result, _) in enumerate(after) if result is not None)
    assert all(result is not None for _, result, _ in after[first_ok:]), "recovered, then failed again"
    for _, result, _ in after[first_ok:]:
        assert_same(result, expected)
    assert "model 'mask_rcnn' reloaded" in supervised.log_text()
    recovered_in = after[first_ok][0] - killed_at
    print(f"killed mask_rcnn: {len(errors)} failed requests in {recovered_in:.1f} s, "
          f"messages {sorted(set(errors))}")


def test_killed_monitoring_changes_no_answer(supervised, reference, images):
    data = images["tall.png"]
    expected = reference(data, RequestOptions(0.0))
    kill_stub(supervised, MONITORING_NAME)
    with grpcclient.InferenceServerClient(supervised.grpc_url) as client:
        for _ in range(3):
            assert_same(client.infer(PIPELINE_NAME, [image_tensor(data)],
                                     parameters={"score_threshold": 0.0}), expected)


def test_raising_mask_rcnn_is_an_internal_error_naming_it(exported, images, tmp_path):
    repository = assemble(exported.model_file, tmp_path / "repository")
    runner = repository / MODEL_NAME / "1" / "model.py"
    runner.write_text(runner.read_text().replace(
        "def execute(self, requests):",
        "def execute(self, requests):\n        raise RuntimeError('injected fault')\n", 1))
    with TritonServer(repository, extra_args=("--model-control-mode", "explicit")) as server, \
            httpclient.InferenceServerClient(server.http_url) as admin, \
            grpcclient.InferenceServerClient(server.grpc_url) as client:
        for model in (MODEL_NAME, PIPELINE_NAME):
            admin.load_model(model)
        with pytest.raises(InferenceServerException) as info:
            client.infer(PIPELINE_NAME, [image_tensor(images["scene.jpg"])])
        assert info.value.status() == "StatusCode.INTERNAL"
        assert info.value.message().startswith("pipeline_bls: mask_rcnn failed: ")
        assert "injected fault" in info.value.message()
        # (Recovery once mask_rcnn is back: the killed-mask_rcnn test above.)
