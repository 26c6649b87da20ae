"""The one harness of every benchmark: images, export, server, closed loop, interleaved
rounds, latency summary, Triton's statistics, tables and JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bls.contract import MODEL_NAME
from bls.metrics import DURATION_METRIC, OUTCOMES, REQUESTS_METRIC, STAGES
from client.metrics import value
from client.results import latency_summary

ROOT = Path(__file__).resolve().parent.parent
VERSION = "1"  # the model version directory `python -m export` writes
REQUEST_TIMEOUT_S = 900


# --------------------------------------------------------------------------- images
@dataclass(frozen=True)
class Image:
    name: str
    data: bytes  # the encoded file


def scene(width: int, height: int, seed: int, ext: str = ".jpg", gray: bool = False) -> bytes:
    """A generated scene (export.samples), encoded as ``ext``."""
    from export import samples

    pixels = samples.scene(height, width, seed=seed)
    return samples.encode(np.ascontiguousarray(pixels[:, :, 1]) if gray else pixels, ext)


def images(paths: list[Path], sizes: list[str] = (), default: tuple = ("640x480",)) -> list[Image]:
    """The --image files (a repeated name gets '#k'), then a generated JPEG per WxH size
    (seed = its position); ``default`` sizes when neither is given."""
    out, seen = [], set()
    for p in paths:
        out.append(Image(p.name if p.name not in seen else f"{p.name} #{len(out) + 1}",
                         p.read_bytes()))
        seen.add(p.name)
    for i, size in enumerate(sizes or ([] if paths else default)):
        w, h = (int(v) for v in size.lower().split("x"))
        out.append(Image(f"scene{w}x{h}.jpg (generated)", scene(w, h, i)))
    return out


# --------------------------------------------------------------------------- command line
def parser(module: str, doc: str, *common: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the shared options named in ``common``: image, generated,
    repository, size (--min-size/--max-size), json."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    if "image" in common:
        add("--image", type=Path, action="append", default=[], help="image to send (repeatable)")
    if "generated" in common:
        add("--generated", action="append", default=[], metavar="WxH",
            help="also a generated JPEG scene of this size (repeatable)")
    if "repository" in common:
        add("--repository", type=Path, help="an exported repository (not modified); a new "
            "or empty folder is exported into and kept. Default: a scratch export")
    if "size" in common:
        add("--min-size", type=int, help="export: shortest edge (default 800)")
        add("--max-size", type=int, help="export: longest edge at most (default 1333)")
    if "json" in common:
        add("--json", type=Path, help="also write the figures to this JSON file")
    return p


def parse(p: argparse.ArgumentParser, argv, *rules: tuple[bool, str]) -> argparse.Namespace:
    """Parse; refuse a missing --image, a bad --generated and any (failed, message) rule."""
    args = p.parse_args(argv)
    for path in getattr(args, "image", []):
        if not path.is_file():
            p.error(f"--image {path}: no such file")
    for size in getattr(args, "generated", []):
        if not all(v.isdigit() and int(v) > 0 for v in size.lower().split("x", 1)) \
                or "x" not in size.lower():
            p.error(f"--generated {size}: expected WxH, e.g. 640x480")
    for failed, message in rules:
        if failed(args) if callable(failed) else failed:
            p.error(message)
    return args


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def begin(module: str, argv) -> tuple[str, dict]:
    """SIGTERM ends like Ctrl-C (finally blocks stop servers); prints the command, the
    machine and the load average. -> (command line, machine)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    command = shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
    try:
        import torch
    except ImportError:  # benchmarks.prepare under a Pillow-SIMD venv without torch
        torch = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    machine = {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
               "torch_threads": torch.get_num_threads() if torch else 0,
               "torch": torch.__version__ if torch else "absent", "numpy": np.__version__,
               "cpu_model": cpu, "python": platform.python_version(),
               "loadavg_start": os.getloadavg()}
    print(f"command: {command}")
    print(f"machine: {machine['cpu_count']} CPUs ({machine['usable_cpus']} usable), {cpu}; "
          f"torch {machine['torch']} with {machine['torch_threads']} threads here; numpy "
          f"{machine['numpy']}; python {machine['python']}")
    print(f"load average at start: {loadavg()}", flush=True)
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
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e or 'Ctrl-C'}); server stopped", file=sys.stderr)
        sys.exit(130)


# --------------------------------------------------------------------------- repository, server
@dataclass
class Repository:
    path: Path
    meta: object  # bls.metadata.ModelMetadata
    exported: bool
    export_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def model_file(repo: Path) -> Path:
    from export.torchscript import MODEL_FILENAME

    return repo / MODEL_NAME / VERSION / MODEL_FILENAME


def prepare_repository(args, scratch: Path, export_args=()) -> Repository:
    """--repository with an exported model: use it. Else `python -m export torchvision`
    (seeded, --min-size/--max-size, ``export_args``) into --repository or ``scratch``."""
    from export.torchscript import read_metadata

    repo = args.repository
    if repo is not None and model_file(repo).is_file():
        meta = read_metadata(model_file(repo))
        notes = [f"{name} {wanted} ignored: the repository's model was exported with {got}"
                 for name, wanted, got in (("--min-size", args.min_size, meta.min_size),
                                           ("--max-size", args.max_size, meta.max_size))
                 if wanted is not None and wanted != got]
        return Repository(repo.resolve(), meta, False, notes=notes)
    if repo is not None and repo.exists() and any(repo.iterdir()):
        raise SystemExit(f"--repository {repo} exists but holds no {model_file(Path('.'))}; "
                         "give an exported repository, an empty or new folder, or leave it out")
    target = repo if repo is not None else scratch / "repository"
    command = [sys.executable, "-m", "export", "torchvision", "--repository", str(target),
               "--min-size", str(args.min_size or 800), "--max-size", str(args.max_size or 1333),
               "--seed", "0", *export_args]
    print(f"exporting: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"export failed (status {done.returncode}):\n{done.stdout[-4000:]}")
    return Repository(target.resolve(), read_metadata(model_file(target)), True,
                      time.perf_counter() - start)


@contextmanager
def serve(repository: Path, log: Path | None = None):
    """An embedded tritonserver on free loopback ports (client.server.TritonServer),
    stopped by its process group whatever happens; its log tail printed on a failure."""
    from client.server import ServerFailed, TritonServer

    server = TritonServer(repository, log=log)
    print(f"starting tritonserver (embedded) on {repository} ...", flush=True)
    start = time.perf_counter()
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


def make_input(module, data: bytes, batch: bool):
    """The pipeline's BYTES input [1] (or [1, 1]) of ``module`` (client.cli.make_input)."""
    from client.cli import make_input

    return make_input(module, data, batch)


def tensor_input(module, name: str, array: np.ndarray):
    """An InferInput of ``module`` (tritonclient.grpc or .http) holding ``array``."""
    from tritonclient.utils import np_to_triton_dtype

    tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def http_answer(server, model: str, data: bytes, batch: bool, parameters: dict | None,
                binary: bool = True) -> tuple[dict, int]:
    """One request over HTTP -> (outputs by name, response body bytes; with JSON outputs
    the body's JSON text as Triton writes it, compact)."""
    import tritonclient.http as httpclient

    from bls.contract import PIPELINE_OUTPUTS

    with httpclient.InferenceServerClient(server.http_url, network_timeout=REQUEST_TIMEOUT_S,
                                          connection_timeout=REQUEST_TIMEOUT_S) as client:
        outputs = [httpclient.InferRequestedOutput(s.name, binary_data=binary)
                   for s in PIPELINE_OUTPUTS]
        result = client.infer(model, [make_input(httpclient, data, batch)], outputs=outputs,
                              parameters=parameters)
        size = (len(result._buffer) if binary else
                len(json.dumps(result.get_response(), separators=(",", ":"))))
        return {s.name: result.as_numpy(s.name) for s in PIPELINE_OUTPUTS}, size


def describe(configs: dict[str, dict]) -> str:
    """Model configs (JSON, by name) -> one line: backend, instances, torch threads,
    batching."""
    parts = []
    for name, config in configs.items():
        groups = ", ".join(f"{g.get('count', 1)}x {g.get('kind', '?')}"
                           for g in config.get("instance_group", []))
        text = f"{name}: {config.get('backend') or config.get('platform')}, instances {groups}"
        threads = config.get("parameters", {}).get("intra_op_threads", {}).get("string_value")
        if threads is not None:
            text += f", intra_op_threads {threads}{' (torch default)' if threads in ('', '0') else ''}"
        if config.get("max_batch_size"):
            delay = config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0)
            text += f", max_batch_size {config['max_batch_size']}, queue delay {delay} us"
        parts.append(text)
    return "; ".join(parts)


# --------------------------------------------------------------------------- loops
def rotated(items: list, i: int) -> list:
    """items rotated by i: each item goes first in turn over iterations."""
    k = i % len(items)
    return items[k:] + items[:k]


def rounds(names: list, iterations: int, warmup: int, label: str):
    """Yield (timed, name) for warmup + iterations rounds, the names in an order rotated
    each round so that the machine's drift hits all alike; progress on stderr."""
    for i in range(warmup + iterations):
        for name in rotated(list(names), i):
            yield i >= warmup, name
        print(f"  {label}: iteration {i + 1}/{warmup + iterations}"
              f"{' (warm-up)' if i < warmup else ''}", file=sys.stderr, flush=True)


def timed(call, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - start, result


class Failed(Exception):
    """A request whose answer is wrong; counted by its message as it is."""


def error_text(error: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, (InferenceServerException, Failed)):
        return str(error)[:300]
    return f"{type(error).__name__}: {str(error) or repr(error)}"[:300]


async def closed_loop(send, concurrency: int, requests: int, max_seconds: float,
                      first: int = 0) -> dict:
    """The one closed loop: ``concurrency`` workers, one request in flight each, ``await
    send(k, worker)`` for k = first, first + 1, ... until ``requests`` were sent or
    ``max_seconds`` passed (those in flight finish). An exception is a failed request,
    counted by message. -> latencies (s, answered), latencies and errors per worker,
    errors, seconds (first send to last answer), issued."""
    latencies = [[] for _ in range(concurrency)]
    errors = [Counter() for _ in range(concurrency)]
    issued, start = 0, time.perf_counter()
    last = start

    async def worker(w: int) -> None:
        nonlocal issued, last
        while issued < requests and time.perf_counter() < start + max_seconds:
            issued += 1
            sent = time.perf_counter()
            try:
                await send(first + issued - 1, w)
                latencies[w].append(time.perf_counter() - sent)
            except Exception as e:  # counted; the run goes on
                errors[w][error_text(e)] += 1
            last = time.perf_counter()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"latencies": [x for ws in latencies for x in ws], "by_worker": latencies,
            "worker_errors": errors, "errors": dict(sum(errors, Counter())),
            "seconds": last - start, "issued": issued}


def summary(seconds, keep: bool = False) -> dict:
    """Latencies in seconds -> ms: n, mean, median (= p50), p90, p99, min, max (NaN when
    none; client.results.latency_summary's percentiles); ``keep``: the samples too."""
    s = latency_summary(seconds)
    ms = np.asarray(seconds, np.float64) * 1000
    out = {"n": s.count, "mean_ms": s.mean_ms, "median_ms": s.p50_ms, "p50_ms": s.p50_ms,
           "p90_ms": s.p90_ms, "p99_ms": s.p99_ms,
           "min_ms": float(ms.min()) if ms.size else float("nan"),
           "max_ms": float(ms.max()) if ms.size else float("nan")}
    return out | ({"samples_ms": ms.tolist()} if keep else {})


# --------------------------------------------------------------------------- Triton's figures
def model_statistics(response) -> dict[str, Counter]:
    """Triton's cumulative statistics per model (gRPC response; versions summed)."""
    out: dict[str, Counter] = {}
    for s in response.model_stats:
        st, entry = s.inference_stats, out.setdefault(s.name, Counter())
        entry.update(success=st.success.count, fail=st.fail.count, success_ns=st.success.ns,
                     queue_ns=st.queue.ns, executions=s.execution_count,
                     compute_ns=st.compute_input.ns + st.compute_infer.ns + st.compute_output.ns,
                     inferences=s.inference_count)
    return out


def answered(stats: dict, model: str) -> float:
    entry = stats.get(model, {})
    return entry.get("success", 0) + entry.get("fail", 0)


async def settled_statistics(client, model: str, expected: float, timeout: float = 5.0) -> dict:
    """Triton's statistics (gRPC aio client) once they count ``expected`` requests of
    ``model``: a request is recorded when released, maybe just after its answer."""
    deadline = time.monotonic() + timeout
    while True:
        stats = model_statistics(await client.get_inference_statistics())
        if answered(stats, model) >= expected or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.01)


def statistics_delta(before: dict, after: dict, models) -> dict[str, dict]:
    """Per model between two readings: requests, failed, executions, mean queue, compute
    and whole (success) ms per request, mean batch."""
    out = {}
    for model in models:
        a, b = before.get(model, Counter()), after.get(model, Counter())
        d = {k: b[k] - a[k] for k in ("success", "fail", "success_ns", "queue_ns",
                                      "compute_ns", "executions", "inferences")}
        n = d["success"] + d["fail"]
        out[model] = {"requests": n, "failed": d["fail"], "executions": d["executions"],
                      **{f"{k}_ms": d[f"{k}_ns"] / n / 1e6 if n else 0.0
                         for k in ("queue", "compute")},
                      "total_ms": d["success_ns"] / d["success"] / 1e6 if d["success"] else 0.0,
                      "batch": d["inferences"] / d["executions"] if d["executions"] else 0.0}
    return out


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """pipeline_bls's own metrics (bls/metrics.py) between two scrapes: requests and mean
    ms per request of each stage (Triton's statistics end when its execute returns)."""
    n = sum(value(after, REQUESTS_METRIC, outcome=o) - value(before, REQUESTS_METRIC, outcome=o)
            for o in OUTCOMES)
    return {"requests": n} | {
        f"{s}_ms": (value(after, DURATION_METRIC, stage=s) - value(before, DURATION_METRIC,
                                                                    stage=s)) / n / 1000
        if n else 0.0 for s in STAGES}


# --------------------------------------------------------------------------- printing
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(v, digits: int = 0) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"  # None, NaN -> "-"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def table(headers: list[str], rows: list[list], left: int = 1, indent: str = "  ") -> str:
    """Fixed-width text table; the first ``left`` columns left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [indent + "  ".join(c.ljust(w) if i < left else c.rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
