"""The one harness of every benchmark: images, command line, export, server, the closed loop,
interleaved rounds, the latency summary, Triton's statistics, tables and JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bls.contract.tensors import MODEL_NAME
from client.results import latency_summary

ROOT = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT_S = 900

@dataclass(frozen=True)
class Image:
    name: str
    data: bytes  # the encoded file

def scene(width: int, height: int, seed: int, ext: str = ".jpg", gray: bool = False) -> bytes:
    """A generated scene (export.samples), encoded as ``ext``."""
    from export import samples

    pixels = samples.scene(height, width, seed=seed)
    return samples.encode(np.ascontiguousarray(pixels[:, :, 1]) if gray else pixels, ext)

def images(paths: list[Path], sizes=(), default=("640x480",)) -> list[Image]:
    """The --image files (a repeated name gets '#k'), then a generated JPEG per WxH size (seed:
    its position); ``default`` sizes when neither is given."""
    out = []
    for p in paths:
        out.append(Image(f"{p.name} #{len(out) + 1}" if any(i.name == p.name for i in out) else p.name, p.read_bytes()))
    for i, size in enumerate(sizes or ([] if paths else default)):
        w, hh = (int(v) for v in size.lower().split("x"))
        out.append(Image(f"scene{w}x{hh}.jpg (generated)", scene(w, hh, i)))
    return out

def parser(module: str, doc: str, *common: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the shared options named: image, generated, repository, size, json."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    options = {"image": [("--image", dict(type=Path, action="append", default=[], help="image (repeatable)"))],
               "generated": [("--generated", dict(action="append", default=[], metavar="WxH",
                                                  help="also a generated JPEG scene of this size (repeatable)"))],
               "repository": [("--repository", dict(type=Path, help="an exported repository (not modified); a new "
                                                    "or empty folder is exported into. Default: a scratch export"))],
               "size": [("--min-size", dict(type=int, help="export: shortest edge (default 800)")),
                        ("--max-size", dict(type=int, help="export: longest edge at most (default 1333)"))],
               "json": [("--json", dict(type=Path, help="also write the figures to this JSON file"))]}
    for flag, kw in (o for name in common for o in options[name]):
        p.add_argument(flag, **kw)
    return p

def parse(p: argparse.ArgumentParser, argv, *rules) -> argparse.Namespace:
    """Parse; refuse a missing --image, a bad --generated, and each (failed(args), message) rule."""
    args = p.parse_args(argv)
    rules = [(lambda a, path=path: not path.is_file(), f"--image {path}: no such file")
             for path in getattr(args, "image", [])] + list(rules)
    rules += [(lambda a, s=s: not all(v.isdigit() and int(v) for v in s.lower().split("x")) or s.lower().count("x") != 1,
               f"--generated {s}: expected WxH, e.g. 640x480") for s in getattr(args, "generated", [])]
    for failed, message in rules:
        if failed(args):
            p.error(message)
    return args

def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())

def begin(module: str, argv) -> tuple[str, dict]:
    """SIGTERM ends like Ctrl-C (finally blocks stop servers); prints the command, the machine
    and the load average. -> (command line, machine)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    command = shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
    try:
        import torch
    except ImportError:  # benchmarks.prepare under a Pillow-SIMD venv without torch
        torch = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    machine = {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
               "torch_threads": torch.get_num_threads() if torch else 0, "torch": getattr(torch, "__version__", "absent"),
               "numpy": np.__version__, "cpu_model": cpu, "python": platform.python_version(),
               "loadavg_start": os.getloadavg()}
    print(f"command: {command}\nmachine: {machine['cpu_count']} CPUs ({machine['usable_cpus']} usable), {cpu}; torch "
          f"{machine['torch']} with {machine['torch_threads']} threads here; numpy {np.__version__}; python "
          f"{machine['python']}\nload average at start: {loadavg()}", flush=True)
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

def model_file(repo: Path) -> Path:
    from export.repository import VERSION
    from export.torchscript import MODEL_FILENAME

    return repo / MODEL_NAME / VERSION / MODEL_FILENAME

def prepare_repository(args, scratch: Path, export_args=()) -> SimpleNamespace:
    """--repository with an exported model: used as it is. Else `python -m export torchvision` (seeded,
    --min-size/--max-size, ``export_args``) into --repository or ``scratch``. -> path, meta
    (ModelMetadata), exported, export_s, notes."""
    from export.torchscript import read_metadata

    repo = args.repository
    if repo is not None and model_file(repo).is_file():
        meta = read_metadata(model_file(repo))
        return SimpleNamespace(path=repo.resolve(), meta=meta, exported=False, export_s=0.0, notes=[
            f"{name} {wanted} ignored: the repository's model was exported with {got}" for name, wanted, got in (
                ("--min-size", args.min_size, meta.min_size), ("--max-size", args.max_size, meta.max_size))
            if wanted is not None and wanted != got])
    if repo is not None and repo.exists() and any(repo.iterdir()):
        raise SystemExit(f"--repository {repo} exists but holds no {model_file(Path('.'))}; give an exported "
                         "repository, an empty or new folder, or leave it out")
    target = repo if repo is not None else scratch / "repository"
    command = [sys.executable, "-m", "export", "torchvision", "--repository", str(target), "--min-size",
               str(args.min_size or 800), "--max-size", str(args.max_size or 1333), "--seed", "0", *export_args]
    print(f"exporting: {shlex.join(command)}", flush=True)
    seconds, done = timed(subprocess.run, command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise SystemExit(f"export failed (status {done.returncode}):\n{done.stdout[-4000:]}")
    return SimpleNamespace(path=target.resolve(), meta=read_metadata(model_file(target)), exported=True,
                           export_s=seconds, notes=[])

@contextmanager
def session(module: str, argv, args=None, export_args=()):
    """begin(), then a scratch folder (removed at the end) and, given ``args``, prepare_repository().
    -> namespace: command, machine, scratch, repo."""
    command, machine = begin(module, argv)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{module.rsplit('.', 1)[-1]}-"))
    try:
        yield SimpleNamespace(command=command, machine=machine, scratch=scratch, repo=None if args is None else
                              prepare_repository(args, scratch, export_args))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

@contextmanager
def serve(repository: Path, log: Path | None = None):
    """An embedded tritonserver on free loopback ports (server.launcher.TritonServer), stopped by
    its process group whatever happens; its log tail printed on a failure."""
    from server.launcher import ServerFailed, TritonServer

    server, start = TritonServer(repository, log=log), time.perf_counter()
    print(f"starting tritonserver (embedded) on {repository} ...", flush=True)
    try:
        server.start()
        print(f"server ready in {time.perf_counter() - start:.0f} s (grpc {server.grpc_url}, http "
              f"{server.http_url}, pid {server.pid})", flush=True)
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

def proc_kb(pid: int, name: str) -> dict[str, int]:
    """The 'Key: N kB' lines of /proc/PID/<name> (status, smaps_rollup) -> {key: bytes}."""
    return {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in Path(
        f"/proc/{pid}/{name}").read_text().splitlines()) if v.endswith("kB")}

def processes(server) -> list[dict]:
    """The server's live processes (its process group): pid, name (tritonserver, run_triton.sh,
    stub:<model>), cpu_s (utime + stime), and /proc/PID/status's and smaps_rollup's kB fields in bytes."""
    from server.launcher import live_members
    from server.watchdog import stubs

    models = {pid: m for m, pids in stubs(server.tritonserver_pid).items() for pid in pids}
    out = []
    for pid in sorted(live_members(server.pid)):
        try:
            fields = proc_kb(pid, "status") | proc_kb(pid, "smaps_rollup")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue  # it ended while being read
        out.append(fields | {"pid": pid, "cpu_s": (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"),
                             "name": f"stub:{models[pid]}" if pid in models else "run_triton.sh" if pid == server.pid
                             else comm})
    return out

def make_input(module, data: bytes, batch: bool):
    """The pipeline's BYTES input [1] (or [1, 1]) of ``module`` (client.cli.make_input)."""
    from client.cli import make_input

    return make_input(module, data, batch)

def tensor_input(module, name: str, array: np.ndarray):
    """An InferInput of ``module`` (tritonclient.grpc, .grpc.aio or .http) holding ``array``."""
    from tritonclient.utils import np_to_triton_dtype

    tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor

def http_answer(server, model: str, data: bytes, batch: bool, parameters, binary: bool = True) -> tuple[dict, int]:
    """One request over HTTP, binary or JSON outputs -> (outputs by name, the response body's bytes)."""
    import http.client

    import tritonclient.http as httpclient

    from bls.contract.tensors import PIPELINE_OUTPUTS

    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [make_input(httpclient, data, batch)], parameters=parameters,
        outputs=[httpclient.InferRequestedOutput(s.name, binary_data=binary) for s in PIPELINE_OUTPUTS])
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=body, headers={
            "Content-Type": "application/octet-stream"} | ({} if json_size is None else {
                "Inference-Header-Content-Length": str(json_size)}))
        response = connection.getresponse()
        content, header = response.read(), response.getheader("Inference-Header-Content-Length")
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status} from {model}: {content[:500]!r}")
    result = httpclient.InferenceServerClient.parse_response_body(content, header_length=header and int(header))
    return {s.name: result.as_numpy(s.name) for s in PIPELINE_OUTPUTS}, len(content)

def describe(configs: dict[str, dict]) -> str:
    """Model configs (JSON, by name) -> one line: backend, instances, torch threads, batching."""
    parts = []
    for name, c in configs.items():
        text = f"{name}: {c.get('backend') or c.get('platform')}, instances " + ", ".join(
            f"{g.get('count', 1)}x {g.get('kind', '?')}" for g in c.get("instance_group", []))
        if (threads := c.get("parameters", {}).get("intra_op_threads", {}).get("string_value")) is not None:
            text += f", intra_op_threads {threads}" + (" (torch default)" if threads in ("", "0") else "")
        if c.get("max_batch_size"):
            text += (f", max_batch_size {c['max_batch_size']}, queue delay "
                     f"{c.get('dynamic_batching', {}).get('max_queue_delay_microseconds', 0)} us")
        parts.append(text)
    return "; ".join(parts)

def rotated(items: list, i: int) -> list:
    """items rotated by i: each item goes first in turn over iterations."""
    return items[i % len(items):] + items[:i % len(items)]

def rounds(names: list, iterations: int, warmup: int, label: str):
    """Yield (timed, name) for warmup + iterations rounds, the names in an order rotated each
    round so that the machine's drift hits all alike; progress on stderr."""
    for i in range(warmup + iterations):
        yield from ((i >= warmup, name) for name in rotated(list(names), i))
        print(f"  {label}: iteration {i + 1}/{warmup + iterations}{' (warm-up)' if i < warmup else ''}",
              file=sys.stderr, flush=True)

def timed(call, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - start, result

async def timed_async(awaitable) -> tuple[float, object]:
    """(seconds, result) of awaiting ``awaitable``."""
    start = time.perf_counter()
    result = await awaitable
    return time.perf_counter() - start, result

def interleaved(client, targets: dict[str, tuple], iterations: int, warmup: int, label: str) -> tuple[dict, dict]:
    """Sequential requests in rounds(): targets name -> (model, inputs, parameters). -> (timed
    seconds by name, the last InferResult by name)."""
    samples, last = {name: [] for name in targets}, {}
    for timed_round, name in rounds(list(targets), iterations, warmup, label):
        model, inputs, parameters = targets[name]
        seconds, last[name] = timed(client.infer, model, inputs, parameters=parameters,
                                    client_timeout=REQUEST_TIMEOUT_S)
        samples[name] += [seconds] * timed_round
    return samples, last

def paired(a: list[float], b: list[float]) -> float:
    """The median of a / b - 1 over pairs taken together (the machine's drift cancels)."""
    return float(np.median(np.asarray(a) / np.asarray(b) - 1))

class Failed(Exception):
    """A request whose answer is wrong; counted by its message as it is."""

def error_text(error: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, (InferenceServerException, Failed)):
        return str(error)[:300]
    return f"{type(error).__name__}: {str(error) or repr(error)}"[:300]

async def closed_loop(send, concurrency: int, requests: int, max_seconds: float, first: int = 0) -> dict:
    """The one closed loop: ``concurrency`` workers, one request in flight each, ``await send(k,
    worker)`` for k = first, first + 1, ... until ``requests`` were sent or ``max_seconds`` passed
    (those in flight finish); an exception is a failure, counted by message. -> latencies
    (seconds, answered), by_worker, worker_errors, errors, seconds (first send to last answer), issued."""
    latencies, errors = [[] for _ in range(concurrency)], [Counter() for _ in range(concurrency)]
    issued, start = 0, time.perf_counter()
    last = start

    async def worker(w: int) -> None:
        nonlocal issued, last
        while issued < requests and time.perf_counter() < start + max_seconds:
            issued += 1
            try:
                latencies[w].append((await timed_async(send(first + issued - 1, w)))[0])
            except Exception as e:  # counted; the run goes on
                errors[w][error_text(e)] += 1
            last = time.perf_counter()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"latencies": [x for ws in latencies for x in ws], "by_worker": latencies, "worker_errors": errors,
            "errors": dict(sum(errors, Counter())), "seconds": last - start, "issued": issued}

def summary(seconds, keep: bool = False) -> dict:
    """Latencies, seconds -> ms: n, mean, median (= p50), p90, p99 (client.results.latency_summary),
    min, max; NaN when there are none; ``keep``: the samples too."""
    s, ms = latency_summary(seconds), np.asarray(seconds, np.float64) * 1000
    return {"n": s.count, "mean_ms": s.mean_ms, "median_ms": s.p50_ms, "p50_ms": s.p50_ms, "p90_ms": s.p90_ms,
            "p99_ms": s.p99_ms, "min_ms": float(ms.min()) if ms.size else float("nan"),
            "max_ms": float(ms.max()) if ms.size else float("nan")} | ({"samples_ms": ms.tolist()} if keep else {})

def model_statistics(response) -> dict[str, Counter]:
    """Triton's cumulative statistics per model (a gRPC response; versions summed)."""
    out: dict[str, Counter] = {}
    for s in response.model_stats:
        st = s.inference_stats
        out.setdefault(s.name, Counter()).update(
            success=st.success.count, fail=st.fail.count, success_ns=st.success.ns, queue_ns=st.queue.ns,
            compute_ns=st.compute_input.ns + st.compute_infer.ns + st.compute_output.ns,
            executions=s.execution_count, inferences=s.inference_count)
    return out

def statistics_delta(before: dict, after: dict, models) -> dict[str, dict]:
    """Per model between two readings: requests, failed, executions; mean queue, compute and
    whole (success) ms per request; mean batch."""
    out = {}
    for model in models:
        d = after.get(model, Counter()).copy()
        d.subtract(before.get(model, Counter()))
        n = d["success"] + d["fail"]
        out[model] = {"requests": n, "failed": d["fail"], "executions": d["executions"],
                      "queue_ms": d["queue_ns"] / n / 1e6 if n else 0.0,
                      "compute_ms": d["compute_ns"] / n / 1e6 if n else 0.0,
                      "total_ms": d["success_ns"] / d["success"] / 1e6 if d["success"] else 0.0,
                      "batch": d["inferences"] / d["executions"] if d["executions"] else 0.0}
    return out

def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"

def fmt(v, digits: int = 0) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"  # None, NaN -> "-"

def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n / 1024:.1f} GiB"

def table(headers: list[str], rows: list[list], left: int = 1, indent: str = "  ") -> str:
    """Fixed-width text table; the first ``left`` columns left-aligned."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [indent + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    return "\n".join(line.rstrip() for line in [lines[0], indent + "  ".join("-" * w for w in widths), *lines[1:]])
