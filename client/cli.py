"""python -m client infer PATH...: send images to the served pipeline, print what it
found, write COCO results and overlays. (python -m client watch: see client/watch.py;
python -m client probe: client/probe.py.)

  python -m client infer photos/ --protocol grpc --concurrency 4 --out build/client
  python -m client infer a.jpg b.png --url 127.0.0.1:8000 --score-threshold 0.3

Requests go out through tritonclient's asyncio clients (http.aio / grpc.aio), at most
--concurrency at a time. A request answered UNAVAILABLE (a model not ready, a server
stopping, a timeout; docs/contract.md "Error codes"), INTERNAL "Stub process ... is not healthy."
(a stub died or is being reloaded) or refused by a closed connection is retried,
--retries times at most, after 0.25 s, 0.5 s, 1 s, ... (at most 4 s, with jitter). A
failed image is reported with the server's message and counted; the run goes on, and
the exit status is 1 if any image failed (2: no images or no server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from bls.contract.metadata import ModelMetadata
from bls.contract.tensors import ENSEMBLE_NAME, PIPELINE_INPUT, PIPELINE_NAME, MaskFormat
from client import overlay as overlay_ops
from client.results import (Detections, coco_results, decode_masks, latency_summary, throughput,
                            top_labels)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
RESULTS_FILE = "results.json"
IMAGES_FILE = "images.json"


class ServerUnavailable(RuntimeError):
    """The server or the model cannot be reached: nothing can be sent."""


# --------------------------------------------------------------------------- inputs
def collect_images(paths: list[Path]) -> list[Path]:
    """List the images to send: files as given, folders expanded to their images.

    A folder gives its IMAGE_EXTENSIONS files (any case), sorted by name, not recursive.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def overlay_names(paths: list[Path]) -> list[str]:
    """Name each image's overlay '<stem>.overlay.png'.

    Stems that occur twice (a.jpg, a.png, or the same name in two folders) get the
    image's index too, so no overlay replaces another.
    """
    counts = Counter(p.stem for p in paths)
    return [f"{p.stem}.overlay.png" if counts[p.stem] == 1 else f"{p.stem}.{i}.overlay.png"
            for i, p in enumerate(paths)]


def request_parameters(score_threshold: float | None = None, max_detections: int | None = None,
                       mask_format: str | None = None,
                       polygon_tolerance: float | None = None) -> dict:
    """Collect the request parameters that were set; the rest take the server's defaults."""
    params = {"score_threshold": score_threshold, "max_detections": max_detections,
              "mask_format": mask_format, "polygon_tolerance": polygon_tolerance}
    return {k: v for k, v in params.items() if v is not None}


# --------------------------------------------------------------------------- server
def client_module(protocol: str):
    """Import tritonclient.http.aio or tritonclient.grpc.aio for ``protocol``.

    Imported on demand: each pulls in its own stack, aiohttp or grpcio.

    Raises:
        ValueError: ``protocol`` is neither http nor grpc.
    """
    if protocol == "http":
        import tritonclient.http.aio as module
    elif protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        raise ValueError(f"protocol must be http or grpc, got {protocol!r}")
    return module


@dataclass(frozen=True)
class ServedModel:
    """Hold what the client needs of a served model's config.

    Attributes:
        name: the model's name.
        batched: max_batch_size > 0, so inputs and outputs carry a batch dim of 1.
        max_batch_size: from its config.
        meta: the export's metadata (None when the server's config has none).
    """

    name: str
    batched: bool
    max_batch_size: int
    meta: ModelMetadata | None


async def _config(client, protocol: str, model: str) -> dict:
    if protocol == "grpc":
        return (await client.get_model_config(model, as_json=True))["config"]
    return await client.get_model_config(model)


async def served_model(client, protocol: str, model: str) -> ServedModel:
    """Read batching and metadata from the server's config of ``model``.

    An ensemble has no metadata of its own: it is read from the first step model that
    has it.

    Raises:
        ServerUnavailable: the config cannot be read.
    """
    try:
        config = await _config(client, protocol, model)
    except Exception as e:
        raise ServerUnavailable(f"cannot read the config of model '{model}': {e}") from e
    # proto3 JSON leaves out zero values: no max_batch_size means 0
    max_batch = int(config.get("max_batch_size", 0))
    meta = _metadata(config)
    for step in config.get("ensemble_scheduling", {}).get("step", []):
        if meta is not None:
            break
        meta = _metadata(await _config(client, protocol, step["model_name"]))
    return ServedModel(model, max_batch > 0, max_batch, meta)


def _metadata(config: dict) -> ModelMetadata | None:
    try:
        return ModelMetadata.from_model_config(config)
    except ValueError:
        return None


def make_input(module, data: bytes, batched: bool):
    """Make the pipeline's one input from an encoded image.

    Returns:
        The ``module``'s InferInput: object (bytes) [1], or [1, 1] when ``batched``.
    """
    shape = ([1] if batched else []) + list(PIPELINE_INPUT.dims)
    tensor = module.InferInput(PIPELINE_INPUT.name, shape, PIPELINE_INPUT.dtype)
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_).reshape(shape))
    return tensor


@dataclass(frozen=True)
class Retry:
    """Say how a request that may succeed later is retried.

    ``attempts`` tries in all, waiting ``first_delay_s`` doubled each time up to
    ``max_delay_s``, each wait scaled by a random factor in [0.5, 1] so that clients do
    not retry in step.

    Attributes:
        attempts: tries in all, the first included.
        first_delay_s: the first wait, seconds.
        max_delay_s: the longest wait, seconds.
    """

    attempts: int = 4
    first_delay_s: float = 0.25
    max_delay_s: float = 4.0

    def delay(self, retry: int) -> float:
        """Compute the wait in seconds before retry number ``retry`` (0 first)."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** retry) * random.uniform(0.5, 1)


NO_RETRY = Retry(attempts=1)


def retryable(error: Exception) -> bool:
    """Tell whether ``error`` is worth retrying: the request itself was fine.

    That is UNAVAILABLE (gRPC status, or HTTP 503 as Triton maps it), the backend's own
    INTERNAL "Stub process '...' is not healthy." (a stub died with the request in it, or
    the request reached it while it is reloaded: Triton 2.51 says nothing more
    retryable), and connections refused or dropped (docs/contract.md, "Error codes").
    """
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        return str(error.status()) in ("StatusCode.UNAVAILABLE", "503") or (
            str(error.status()) in ("StatusCode.INTERNAL", "500")
            and "is not healthy" in (error.message() or ""))
    return isinstance(error, ConnectionError) or \
        type(error).__name__ in ("ClientConnectorError", "ServerDisconnectedError",
                                 "ClientOSError")


async def infer_one(client, module, model: ServedModel, data: bytes,
                    parameters: dict | None = None, retry: Retry = NO_RETRY,
                    on_retry: Callable[[Exception], None] | None = None,
                    timeout_s: float | None = None) -> Detections:
    """Send one request, retried as ``retry`` says while its error is ``retryable``.

    Each try waits at most ``timeout_s`` (a request the server lost, e.g. with a killed
    stuck model call, is never answered: docs/reliability.md); a timeout is not
    retried.

    Args:
        client, module: a tritonclient aio client and its module (client_module).
        model: the served model (served_model).
        data: the encoded image.
        parameters: request parameters (request_parameters).
        retry: how to retry.
        on_retry: called with the error before each retry.
        timeout_s: the longest wait for each try; None: no limit.

    Raises:
        TimeoutError: a try was not answered within ``timeout_s``.
        InferenceServerException: the server's error on the last try (or a connection
            error).
    """
    for attempt in range(retry.attempts):
        try:
            call = client.infer(model.name, [make_input(module, data, model.batched)],
                                parameters=parameters or None)
            try:
                result = await asyncio.wait_for(call, timeout_s)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no answer within {timeout_s:g} s") from None
            return Detections.from_result(result, model.batched)
        except Exception as e:
            if attempt + 1 >= retry.attempts or not retryable(e):
                raise
            if on_retry is not None:
                on_retry(e)
            await asyncio.sleep(retry.delay(attempt))
    raise AssertionError("unreachable")


async def fetch_model(url: str, protocol: str, model: str) -> ServedModel:
    """Read a served model's batching and metadata (served_model) with a client of its own."""
    client = client_module(protocol).InferenceServerClient(url)
    try:
        return await served_model(client, protocol, model)
    finally:
        await client.close()


async def infer_bytes(url: str, protocol: str, model: str, data: bytes,
                      parameters: dict | None = None) -> Detections:
    """Send one image in one request with a client of its own: for checks, not for throughput."""
    module = client_module(protocol)
    client = module.InferenceServerClient(url)
    try:
        served = await served_model(client, protocol, model)
        return await infer_one(client, module, served, data, parameters)
    finally:
        await client.close()


# --------------------------------------------------------------------------- a run
@dataclass
class ImageResult:
    """Hold one image's outcome: detections, or the error that stopped it.

    Attributes:
        index: the image's position in the run.
        path: its file.
        detections: the answer, or None when it failed.
        error: why it failed, or None.
        latency_s: the request alone (queueing at the server included, file reading
            excluded).
        overlay: the overlay written, if any.
        note: what went wrong after the answer (the overlay), or None.
        retries: retries after UNAVAILABLE.
    """

    index: int
    path: Path
    detections: Detections | None = None
    error: str | None = None
    latency_s: float = 0.0
    overlay: Path | None = None
    note: str | None = None
    retries: int = 0

    @property
    def ok(self) -> bool:
        """Whether the image was answered."""
        return self.detections is not None


@dataclass
class Run:
    """Hold a run of ``client infer``.

    Attributes:
        model: the served model.
        url, protocol: the server.
        results: one ImageResult per image, in the order of the paths.
        wall_s: the run's wall time, seconds.
        out: the folder written to, if any.
    """

    model: ServedModel
    url: str
    protocol: str
    results: list[ImageResult]
    wall_s: float
    out: Path | None = None

    @property
    def ok(self) -> list[ImageResult]:
        """The images answered."""
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[ImageResult]:
        """The images that failed."""
        return [r for r in self.results if not r.ok]


def _error_text(error: Exception) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        return str(error)  # "[status] pipeline_bls: input 'image': ..."
    return f"{type(error).__name__}: {error}"


async def infer_images(paths: list[Path], url: str, protocol: str, model: str,
                       concurrency: int, parameters: dict | None = None,
                       after: Callable[[ImageResult, bytes], None] | None = None,
                       on_result: Callable[[ImageResult], None] | None = None,
                       on_model: Callable[[ServedModel], None] | None = None,
                       retry: Retry = Retry(), timeout_s: float | None = None) -> Run:
    """Send every image, at most ``concurrency`` requests in flight, each retried as
    ``retry`` says while answered UNAVAILABLE.

    after(result, image_bytes): runs in a worker thread once an image succeeded (the
    overlay), outside the concurrency bound so it overlaps the next requests.
    on_result(result): runs in the event loop as each image finishes, in any order.
    on_model(model): runs once the model's config has been read, before any request.
    Results come back in the order of ``paths``.

    Raises:
        ValueError: ``concurrency`` is below 1.
        ServerUnavailable: the model's config cannot be read.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    module = client_module(protocol)
    client = module.InferenceServerClient(url)
    try:
        served = await served_model(client, protocol, model)
        if on_model is not None:
            on_model(served)
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int, path: Path) -> ImageResult:
            result = ImageResult(index, path)
            try:
                async with gate:
                    data = path.read_bytes()  # read here, so a long list is not all in memory
                    start = time.perf_counter()
                    def count(_error: Exception) -> None:
                        result.retries += 1

                    result.detections = await infer_one(client, module, served, data,
                                                        parameters, retry, count, timeout_s)
                    result.latency_s = time.perf_counter() - start
            except Exception as e:  # one image's failure never stops the run
                result.error = _error_text(e)
            if result.ok and after is not None:
                try:
                    await asyncio.to_thread(after, result, data)
                except Exception as e:  # the answer stands; only its drawing failed
                    result.note = f"no overlay: {type(e).__name__}: {e}"
            if on_result is not None:
                on_result(result)
            return result

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
        wall = time.perf_counter() - start
    finally:
        await client.close()
    return Run(served, url, protocol, list(results), wall)


# --------------------------------------------------------------------------- outputs
def overlay_writer(out: Path, names: list[str]) -> Callable[[ImageResult, bytes], None]:
    """Make the after() of infer_images that draws the detections and writes OUT/<name>."""
    def write(result: ImageResult, data: bytes) -> None:
        det = result.detections
        masks = decode_masks(det) if det.has_masks else None
        image = overlay_ops.draw_overlay(overlay_ops.decode_image(data), det, masks)
        result.overlay = overlay_ops.write_png(out / names[result.index], image)
    return write


def write_results(run: Run, out: Path) -> list[Path]:
    """Write OUT/results.json and OUT/images.json; return their paths.

    results.json: COCO results, image_id the image's index. images.json: id, file_name,
    height, width per image; error instead of the size for a failure.
    """
    meta = run.model.meta
    category_ids = meta.category_ids if meta else None
    entries, images = [], []
    for r in run.results:
        if r.ok:
            det = r.detections
            ids = category_ids or range(max(det.classes.tolist(), default=-1) + 1)
            entries += coco_results(det, r.index, ids)
            images.append({"id": r.index, "file_name": str(r.path),
                           "height": det.image_size[0], "width": det.image_size[1]})
        else:
            images.append({"id": r.index, "file_name": str(r.path), "error": r.error})
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(entries))
    (out / IMAGES_FILE).write_text(json.dumps(images, indent=1))
    return [out / RESULTS_FILE, out / IMAGES_FILE]


def image_line(result: ImageResult, top: int = 3) -> str:
    """Render one image's outcome as a line.

    'scene.jpg: 4 detections (412 ms) person 0.91, dog 0.80, ...' or 'FAILED ...'.
    """
    retried = f" after {result.retries} retr{'ies' if result.retries > 1 else 'y'}" \
        if result.retries else ""
    if not result.ok:
        return f"FAILED {result.path}{retried}: {result.error}"
    det = result.detections
    line = (f"{result.path}: {len(det)} detection{'s' * (len(det) != 1)} "
            f"({result.latency_s * 1000:.0f} ms{retried})")
    if len(det):
        line += " " + top_labels(det, top) + (", ..." if len(det) > top else "")
    if result.note:
        line += f" [{result.note}]"
    return line


def summary_lines(run: Run) -> list[str]:
    """Render a run's totals: images, detections, latency, throughput, files written."""
    ok, failed = run.ok, run.failed
    detections = sum(len(r.detections) for r in ok)
    latency = latency_summary([r.latency_s for r in ok])
    retries = sum(r.retries for r in run.results)
    lines = [f"images: {len(ok)} ok, {len(failed)} failed; detections: {detections}"
             + (f"; {retries} retr{'ies' if retries > 1 else 'y'} after UNAVAILABLE"
                if retries else ""),
             f"{latency.line()}; throughput {throughput(len(ok), run.wall_s):.2f} img/s; "
             f"wall time {run.wall_s:.2f} s"]
    if run.out is not None:
        overlays = sum(r.overlay is not None for r in ok)
        lines.append(f"wrote {run.out / RESULTS_FILE}, {run.out / IMAGES_FILE}"
                     + (f" and {overlays} overlay(s) in {run.out}" if overlays else ""))
    return lines


# --------------------------------------------------------------------------- command
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``python -m client``'s arguments (infer or watch)."""
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="send images, print detections, write results")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    p.add_argument("--url", help="HOST:PORT; default 127.0.0.1:8000 (http) or :8001 (grpc)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    p.add_argument("--model", choices=(PIPELINE_NAME, ENSEMBLE_NAME), default=PIPELINE_NAME)
    p.add_argument("--concurrency", type=_positive_int, default=2,
                   help="requests in flight at once (default 2)")
    p.add_argument("--score-threshold", type=float, help="default: the export's")
    p.add_argument("--max-detections", type=int, help="default: all")
    p.add_argument("--mask-format", choices=[f.value for f in MaskFormat],
                   help="rle (default): compact, decoded here; dense: full masks on the "
                        "wire; polygon: COCO outlines; box: masks cropped to their boxes; "
                        "none: boxes only. Every format gives the same results.json and "
                        "overlays")
    p.add_argument("--polygon-tolerance", type=float,
                   help="with --mask-format polygon: simplify outlines to within this many "
                        "pixels (default 0: exact)")
    p.add_argument("--out", type=Path, default=Path("build/client"),
                   help="folder for results.json, images.json, overlays (default build/client)")
    p.add_argument("--no-overlay", action="store_true", help="write no overlay PNGs")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for each answer (default 300)")
    p.add_argument("--retries", type=int, default=Retry.attempts - 1,
                   help="retries of a request answered UNAVAILABLE, with backoff "
                        f"(default {Retry.attempts - 1}; 0: none)")
    sub.add_parser("probe", help="is pipeline_bls answering? (client/probe.py; exit 1 if not)",
                   add_help=False)
    w = sub.add_parser("watch", help="live statistics and alerts from the monitoring model "
                                     "(gRPC stream)")
    w.add_argument("--url", default=DEFAULT_URLS["grpc"], help="gRPC HOST:PORT (default "
                   f"{DEFAULT_URLS['grpc']})")
    w.add_argument("--duration", type=float, default=600.0,
                   help="stop after this many seconds (default 600)")
    w.add_argument("--interval", type=float, default=10.0,
                   help="seconds between statistics (default 10)")
    w.add_argument("--max-alerts", type=_positive_int, default=1000,
                   help="end the subscription after this many alerts")
    args = parser.parse_args(argv)
    if args.command == "watch":
        if not 0 < args.duration <= 24 * 3600 or args.interval <= 0:
            parser.error("need 0 < --duration <= 86400 and --interval > 0")
        args.url = args.url.split("://", 1)[-1]
        return args
    args.url = (args.url or DEFAULT_URLS[args.protocol]).split("://", 1)[-1]
    if not 0 <= args.retries <= 20:
        parser.error(f"--retries must be in [0, 20], got {args.retries}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    return args


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_infer(args: argparse.Namespace, paths: list[Path] | None = None) -> Run:
    """Run `client infer` without the exit status: send, print, write; return the Run.

    Args:
        args: from parse_args.
        paths: the images; None: collected from ``args.paths``.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no images.
        ServerUnavailable: the model's config cannot be read.
    """
    paths = paths if paths is not None else collect_images(args.paths)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                         f"{' '.join(map(str, args.paths))}")
    parameters = request_parameters(args.score_threshold, args.max_detections, args.mask_format,
                                    args.polygon_tolerance)
    after = None if args.no_overlay else overlay_writer(args.out, overlay_names(paths))
    print(f"sending {len(paths)} image(s) to {args.model} at {args.url} ({args.protocol}), "
          f"{args.concurrency} at a time" + (f", parameters {parameters}" if parameters else ""))
    # The bar goes to stderr and only to a terminal (disable=None); lines go to stdout.
    with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=None) as bar:
        def on_result(result: ImageResult) -> None:
            tqdm.write(image_line(result), file=sys.stdout)
            bar.update()
        run = asyncio.run(infer_images(paths, args.url, args.protocol, args.model,
                                       args.concurrency, parameters, after, on_result,
                                       lambda model: tqdm.write(describe_model(model),
                                                                file=sys.stdout),
                                       Retry(attempts=args.retries + 1), args.timeout))
    run.out = args.out
    write_results(run, args.out)
    for line in summary_lines(run):
        print(line)
    return run


def describe_model(model: ServedModel) -> str:
    """Render a served model as a line: batching, source, classes, threshold, weights."""
    meta = model.meta
    batching = (f"batched, max_batch_size {model.max_batch_size}" if model.batched
                else "not batched")
    if meta is None:
        return f"{model.name}: {batching}; no model_metadata in its config"
    return (f"{model.name}: {batching}; {meta.source}, {len(meta.class_names)} classes, "
            f"default score threshold {meta.score_threshold}; weights: {meta.weights}")


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m client``; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:  # its own parser: the same file runs alone (client/probe.py)
        from client.probe import main as probe

        return probe(argv[1:])
    args = parse_args(argv)
    if args.command == "watch":
        from client.watch import watch

        try:
            alerts = watch(args.url, args.duration, args.interval, args.max_alerts)
        except ConnectionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        print(f"{alerts} alert(s) in {args.duration:.0f} s")
        return 0
    try:
        run = run_infer(args)
    except (FileNotFoundError, ValueError, ServerUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if run.failed else 0
