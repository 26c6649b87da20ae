"""The one harness of every benchmark: images, command line, export, server, the closed loop,
interleaved rounds, the latency summary, tables and JSON."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, namedtuple
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from bls.contract.tensors import MODEL_NAME, PIPELINE_OUTPUTS
from client.cli import make_input
from client.results import latency_summary
from export import samples
from export.repository import VERSION
from export.torchscript import MODEL_FILENAME, read_metadata
from server.launcher import ServerFailed, TritonServer

ROOT = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT_S = 900
Image = namedtuple("Image", "name data")  # data: the encoded file (bytes)


def scene(width: int, height: int, seed: int, ext: str = ".jpg", gray: bool = False) -> bytes:
    """export.samples' scene (uint8 HxWx3, or its green channel HxW) encoded as ``ext``."""
    pixels = samples.scene(height, width, seed=seed)
    return samples.encode(np.ascontiguousarray(pixels[:, :, 1]) if gray else pixels, ext)


def images(paths: list[Path], sizes=(), default=("640x480",)) -> list[Image]:
    """The files (a repeated name gets ' #k'), then a JPEG scene per WxH size (or ``default``)."""
    out = []
    for path in paths:
        repeated = any(i.name == path.name for i in out)
        out.append(Image(f"{path.name} #{len(out) + 1}" if repeated else path.name,
                         path.read_bytes()))
    for seed, size in enumerate(sizes or ([] if paths else default)):
        w, hh = (int(v) for v in size.lower().split("x"))
        out.append(Image(f"scene{w}x{hh}.jpg (generated)", scene(w, hh, seed)))
    return out


def parser(module: str, doc: str, *common: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the shared options named: image, generated, repository, size, json."""
    def existing_file(text: str) -> Path:
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"{text}: no such file")
        return Path(text)

    def wxh(text: str) -> str:
        if not re.fullmatch(r"\d*[1-9]\d*x\d*[1-9]\d*", text.lower()):
            raise argparse.ArgumentTypeError(f"{text}: expected WxH, e.g. 640x480")
        return text

    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    if "image" in common:
        add("--image", type=existing_file, action="append", default=[], help="repeatable")
    if "generated" in common:
        add("--generated", type=wxh, action="append", default=[], metavar="WxH",
            help="also a generated JPEG scene of this size (repeatable)")
    if "repository" in common:
        add("--repository", type=Path, help="an exported repository (used as it is), or a "
            "new or empty folder to export into (default: a scratch export)")
    if "size" in common:
        add("--min-size", type=int, help="export: shortest edge (default 800)")
        add("--max-size", type=int, help="export: longest edge at most (default 1333)")
    if "json" in common:
        add("--json", type=Path, help="also write the figures to this JSON file")
    return p


def parse(p: argparse.ArgumentParser, argv, *rules) -> argparse.Namespace:
    """p.parse_args(argv), then p.error(message) for a (failed(args), message) rule that fails."""
    args = p.parse_args(argv)
    for failed, message in rules:
        if failed(args):
            p.error(message)
    return args


def begin(module: str, argv) -> tuple[str, dict]:
    """SIGTERM ends like Ctrl-C; prints the command and the machine -> (command, machine)."""
    import torch  # only here: its import takes seconds

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # finally blocks stop servers
    command = shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
    cpu = re.search(r"^model name\s*: (.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    versions = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    machine = {"cpu_model": cpu[1] if cpu else platform.processor(),
               "usable_cpus": len(os.sched_getaffinity(0)),
               "torch_threads": torch.get_num_threads(),
               "python": platform.python_version(),
               "loadavg_start": [round(v, 2) for v in os.getloadavg()]} | {
        name: versions.get(name, "absent") for name in ("torch", "tritonclient", "nvidia-pytriton")}
    print(f"command: {command}\nmachine: {json.dumps(machine)}", flush=True)
    return command, machine


def write_json(path: Path | None, report: dict) -> None:
    """--json: the report (paths and other non-JSON values as text)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"numbers written to {path}")


def run_main(main) -> None:
    """A script's __main__: main()'s status, or 130 after Ctrl-C or SIGTERM."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C or SIGTERM); server stopped", file=sys.stderr)
        sys.exit(130)


def model_file(repo: Path) -> Path:
    return repo / MODEL_NAME / VERSION / MODEL_FILENAME


def prepare_repository(args, scratch: Path, export_args=()) -> SimpleNamespace:
    """--repository's model, else an export into it or ``scratch`` -> path, meta, notes."""
    repo = args.repository
    if repo is not None and model_file(repo).is_file():
        meta = read_metadata(model_file(repo))
        notes = [f"{name} {wanted} ignored: the repository's model was exported with {got}"
                 for name, wanted, got in (("--min-size", args.min_size, meta.min_size),
                                           ("--max-size", args.max_size, meta.max_size))
                 if wanted is not None and wanted != got]
        return SimpleNamespace(path=repo.resolve(), meta=meta, notes=notes)
    if repo is not None and repo.exists() and any(repo.iterdir()):
        raise SystemExit(f"--repository {repo} exists but holds no {model_file(Path('.'))}; give "
                         "an exported repository, an empty or new folder, or leave it out")
    target = repo if repo is not None else scratch / "repository"
    command = [sys.executable, "-m", "export", "torchvision", "--repository", str(target),
               "--min-size", str(args.min_size or 800), "--max-size", str(args.max_size or 1333),
               "--seed", "0", *export_args]
    print(f"exporting: {shlex.join(command)}", flush=True)
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"export failed (status {done.returncode}):\n{done.stdout[-4000:]}")
    return SimpleNamespace(path=target.resolve(), meta=read_metadata(model_file(target)), notes=[])


@contextmanager
def session(module: str, argv, args=None, export_args=()):
    """begin(), a scratch folder, prepare_repository() if ``args`` -> its namespace."""
    command, machine = begin(module, argv)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{module.rsplit('.', 1)[-1]}-"))
    try:
        repo = None if args is None else prepare_repository(args, scratch, export_args)
        yield SimpleNamespace(command=command, machine=machine, scratch=scratch, repo=repo)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def serve(repository: Path, log: Path | None = None, extra_args: tuple[str, ...] = ()):
    """An embedded TritonServer on free loopback ports (run_triton.sh ``extra_args``),
    stopped whatever happens."""
    server, start = TritonServer(repository, log=log, extra_args=extra_args), time.perf_counter()
    print(f"starting tritonserver (embedded) on {repository} ...", flush=True)
    try:
        server.start()
        print(f"server ready in {time.perf_counter() - start:.0f} s (grpc {server.grpc_url}, "
              f"http {server.http_url}, pid {server.pid})", flush=True)
        yield server
    except BaseException as e:
        if server.pid is not None and not isinstance(e, ServerFailed):
            print(f"server log (tail):\n{server.log_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        server.stop()


def batched(client, model: str) -> bool:
    """Whether ``model`` takes a batch dimension (sync gRPC client)."""
    return client.get_model_config(model).config.max_batch_size > 0


def tensor_input(module, name: str, array: np.ndarray):
    """An InferInput of ``module`` (tritonclient.grpc, .grpc.aio or .http) holding ``array``."""
    tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def http_answer(server, model: str, data: bytes, batch: bool, parameters, binary: bool = True):
    """One request over HTTP (binary or JSON outputs) -> (arrays by name, body bytes)."""
    client = httpclient.InferenceServerClient
    body, json_size = client.generate_request_body(
        [make_input(httpclient, data, batch)], parameters=parameters, outputs=[
            httpclient.InferRequestedOutput(s.name, binary_data=binary) for s in PIPELINE_OUTPUTS])
    headers = {"Content-Type": "application/octet-stream"} | (
        {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)})
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/infer", body,
                                     headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            content, header = response.read(), response.headers["Inference-Header-Content-Length"]
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"HTTP {e.code} from {model}: {e.read()[:500]!r}") from None
    result = client.parse_response_body(content, header_length=header and int(header))
    return {s.name: result.as_numpy(s.name) for s in PIPELINE_OUTPUTS}, len(content)


def rotated(items: list, i: int) -> list:
    """``items`` rotated left by i, so that in turn each goes first (the drift hits all alike)."""
    k = i % len(items)
    return items[k:] + items[:k]


def timed(call, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - start, result


def interleaved(calls: dict, iterations: int, warmup: int, label: str) -> tuple[dict, dict]:
    """warmup + iterations rounds of every call (name -> a function of nothing), the order rotated
    each round (the drift hits all alike), garbage collected before each; progress on stderr
    -> (seconds of the timed rounds by name, last result by name)."""
    samples, last = {name: [] for name in calls}, {}
    for i in range(warmup + iterations):
        for name in rotated(list(calls), i):
            gc.collect()
            seconds, last[name] = timed(calls[name])
            samples[name] += [seconds] * (i >= warmup)
        print(f"  {label}: iteration {i + 1}/{warmup + iterations}"
              f"{' (warm-up)' if i < warmup else ''}", file=sys.stderr, flush=True)
    return samples, last


def paired(a: list[float], b: list[float]) -> float:
    """The median of a / b - 1 over pairs taken together (the machine's drift cancels)."""
    return float(np.median(np.asarray(a) / np.asarray(b) - 1))


class Failed(Exception):
    """A request whose answer is wrong; counted by its message as it is."""


async def closed_loop(send, concurrency: int, requests: int, max_seconds: float, first: int = 0):
    """Workers awaiting send(k, worker), k from ``first``, until ``requests`` or ``max_seconds``."""
    latencies, errors = [[] for _ in range(concurrency)], [Counter() for _ in range(concurrency)]
    issued, start = 0, time.perf_counter()
    last = start

    async def worker(w: int) -> None:
        nonlocal issued, last
        while issued < requests and time.perf_counter() < start + max_seconds:
            issued, sent = issued + 1, time.perf_counter()
            try:
                await send(first + issued - 1, w)
                latencies[w].append(time.perf_counter() - sent)
            except Exception as e:  # counted by message; the run goes on
                text = str(e)
                if not isinstance(e, (InferenceServerException, Failed)):
                    text = f"{type(e).__name__}: {text or repr(e)}"
                errors[w][text[:300]] += 1
            last = time.perf_counter()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"latencies": [x for ws in latencies for x in ws], "by_worker": latencies,
            "worker_errors": errors, "errors": dict(sum(errors, Counter())),
            "seconds": last - start, "issued": issued}


def summary(seconds, keep: bool = False) -> dict:
    """Latencies (s) -> ms: n, mean, median = p50, p90, p99, min, max (NaN if none), samples."""
    s, ms = latency_summary(seconds), np.asarray(seconds, np.float64) * 1000
    low, high = (float(ms.min()), float(ms.max())) if ms.size else (float("nan"),) * 2
    return {"n": s.count, "mean_ms": s.mean_ms, "median_ms": s.p50_ms, "p50_ms": s.p50_ms,
            "p90_ms": s.p90_ms, "p99_ms": s.p99_ms, "min_ms": low, "max_ms": high,
            **({"samples_ms": ms.tolist()} if keep else {})}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(v, digits: int = 0) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"  # None, NaN -> "-"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def table(headers: list[str], rows: list[list], left: int = 1, indent: str = "  ") -> str:
    """Fixed-width text table; the first ``left`` columns left-aligned."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [indent + "  ".join(c.ljust(w) if i < left else c.rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join(line.rstrip() for line in [lines[0], rule, *lines[1:]])
