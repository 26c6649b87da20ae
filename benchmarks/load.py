"""python -m benchmarks.load: a bounded load and soak run against one real server.

  python -m benchmarks.load                                   # 10,000 requests, 8 in flight
  python -m benchmarks.load --requests 10000 --concurrency 8 --min-size 128 --max-size 213 \\
      --image photo.jpg --json build/load/load.json
  python -m benchmarks.load --repository build/repository --requests 2000

What it does:

1. Exports a small torchvision Mask R-CNN (seeded random weights; by default input
   128-213 px, 50 proposals, 3 detections, mask_rcnn on 1 torch thread: cheap on a CPU),
   or serves --repository as it is.
2. Starts its own embedded tritonserver on free loopback ports (server.launcher.TritonServer)
   and always stops it, on errors, Ctrl-C and SIGTERM too (finally block).
3. Sends exactly --requests requests to pipeline_bls, half of --concurrency in flight over
   gRPC (tritonclient.grpc.aio) and half over HTTP (tritonclient.http.aio) at the same time.
   Requests cycle through a few generated images of different sizes and formats (plus any
   --image) and varied request parameters (score_threshold, max_detections, mask_format
   rle/none, and dense every --dense-every-th request). The run stops by itself: after
   the last request, or when --max-seconds is over (then the rest is not sent).
4. Correctness: the first answer to each image+parameters combination is its reference;
   every later answer, over either protocol, must be identical in every output (boxes,
   scores, classes, class names, RLE masks, dense masks, image size). A difference is a
   failure ("mismatch"), as is any error; errors are counted by message.
5. Memory: the server's resident memory (VmRSS summed over the live processes of its
   process group: tritonserver, the Python backend stubs, run_triton.sh; PSS too, which
   counts shared pages once) and its /dev/shm use (the Python backend's shared-memory
   regions, files named after the server's shm-region prefix triton_bls_<pid>_: their
   allocated and apparent sizes; and `df /dev/shm`, which is machine-wide). "before" is
   taken once --warmup requests are answered (lazy allocations and TorchScript's profiling
   runs done), "after" at the end, both with no request in flight; in between a sample
   every --sample-every seconds gives the maximum and the trend.

Targets (PASS/MISS): 0 failures; server RSS and its /dev/shm regions grow < 5 % from
before to after. The exit status is 0 whatever the verdicts (this is a measurement);
non-zero only when the script itself fails (export, server start, bad arguments).
Speed goals live in scripts like this one, never in timed tests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.pipeline import (Repository, begin, check_images, fmt_bytes, load_images,
                                 run_main, table, verdict, write_json)
from benchmarks.pipeline import prepare_repository as pipeline_prepare_repository
from bls.contract.tensors import PIPELINE_NAME


FAILURES_TARGET = 0
GROWTH_TARGET = 0.05  # after / before - 1, less than this

# Defaults: a model cheap enough for 10,000 requests on 2 CPU cores.
DEFAULT_MIN_SIZE = 128
DEFAULT_MAX_SIZE = 213
DEFAULT_PROPOSALS = 50
DEFAULT_DETECTIONS = 3
# mask_rcnn's torch intra-op threads in the exported repository. 1, not torch's default
# (one per core): on a shared 2-core machine two threads contend with the Python stubs
# and the other processes, and one forward was measured 4-8x slower than with one.
DEFAULT_INTRA_OP_THREADS = 1

# Generated images: (name, height, width, extension, grayscale).
GENERATED = (
    ("scene640x480.jpg", 480, 640, ".jpg", False),
    ("scene300x400.png", 400, 300, ".png", False),
    ("gray320x240.png", 240, 320, ".png", True),
    ("scene800x450.webp", 450, 800, ".webp", False),
)

# Request parameters the requests cycle through ({}: the server's defaults).
PARAMETER_SETS = (
    {},
    {"score_threshold": 0.0},
    {"score_threshold": 0.05, "max_detections": 5},
    {"score_threshold": 0.0, "mask_format": "none"},
    {"score_threshold": 0.1, "max_detections": 12, "mask_format": "rle"},
    {"max_detections": 0},
)
# Sent every --dense-every-th request instead (dense answers are N x H x W bytes).
DENSE_PARAMETERS = {"score_threshold": 0.0, "max_detections": 10, "mask_format": "dense"}

PROTOCOLS = ("grpc", "http")
PERCENTILES = (50, 90, 99)


# --------------------------------------------------------------------------- images
@dataclass(frozen=True)
class LoadImage:
    name: str
    data: bytes


def generated_images() -> list[LoadImage]:
    from export import samples

    images = []
    for i, (name, height, width, ext, gray) in enumerate(GENERATED):
        pixels = samples.scene(height, width, seed=10 + i)
        if gray:
            pixels = np.ascontiguousarray(pixels[:, :, 1])
        images.append(LoadImage(name + " (generated)", samples.encode(pixels, ext)))
    return images


def all_images(paths: list[Path]) -> list[LoadImage]:
    """The generated images, then the --image files (none: load_images would generate)."""
    given = [LoadImage(i.name, i.data) for i in load_images(paths)] if paths else []
    return generated_images() + given


@dataclass(frozen=True)
class Job:
    """What request number ``index`` sends: an image and request parameters."""

    index: int
    image: int
    parameters: int  # index into the run's parameter sets (the dense set last)


def schedule(index: int, n_images: int, n_sets: int, dense_every: int) -> Job:
    """Request ``index`` -> (image, parameter set). Every combination of an image and a
    non-dense set comes round in turn; every dense_every-th request is a dense one, its
    image cycling too."""
    if dense_every > 0 and index % dense_every == dense_every - 1:
        return Job(index, (index // dense_every) % n_images, n_sets)
    k = index % (n_images * n_sets)
    return Job(index, k % n_images, k // n_images)


# --------------------------------------------------------------------------- answers
def fingerprint(det) -> dict[str, str]:
    """A digest per output of one answer (client.results.Detections): exact bytes, so two
    answers are identical exactly when their fingerprints are."""
    def digest(*parts) -> str:
        h = hashlib.sha256()
        for part in parts:
            h.update(repr(part).encode() if not isinstance(part, bytes) else part)
            h.update(b"\0")
        return h.hexdigest()[:16]

    return {
        "boxes": digest(det.boxes.shape, np.ascontiguousarray(det.boxes).tobytes()),
        "scores": digest(det.scores.shape, np.ascontiguousarray(det.scores).tobytes()),
        "classes": digest(det.classes.shape, np.ascontiguousarray(det.classes).tobytes()),
        "class_names": digest(*det.class_names),
        "masks_rle": digest(len(det.masks_rle), *det.masks_rle),
        "masks": digest(det.masks.shape, np.ascontiguousarray(det.masks).tobytes()),
        "image_size": digest(det.image_size),
        "masks_polygon": digest(len(det.masks_polygon), *det.masks_polygon),
        "masks_box": digest(det.masks_box.shape, np.ascontiguousarray(det.masks_box).tobytes()),
        "mask_windows": digest(det.mask_windows.shape,
                               np.ascontiguousarray(det.mask_windows).tobytes()),
    }


# --------------------------------------------------------------------------- memory
def _kib_fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """'Name:  123 kB' lines of a /proc file -> {name: bytes} for the names asked."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            out[key] = int(rest.split()[0]) * 1024
    return out


def process_name(pid: int) -> str:
    """tritonserver, run_triton.sh, or 'stub:<model>' for a Python backend stub (the
    model is the folder of the model.py on its command line)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    if comm.startswith("triton_python"):
        for arg in args:
            text = arg.decode(errors="replace")
            if text.endswith("model.py"):
                return f"stub:{Path(text).parent.parent.name}"
        return "stub:?"
    if comm == "bash" and any(a.endswith(b"run_triton.sh") for a in args):
        return "run_triton.sh"
    if comm.startswith("python") and b"-m" in args[:-1]:  # python -m <module>
        return f"python -m {args[args.index(b'-m') + 1].decode(errors='replace')}"
    return comm


def process_memory(pgid: int) -> dict:
    """RSS (VmRSS, and its anon / file / shmem parts) and PSS of each live process of the
    process group, in bytes, with the totals."""
    from server.launcher import live_members

    processes = []
    for pid in sorted(live_members(pgid)):
        try:
            status = _kib_fields(Path(f"/proc/{pid}/status"),
                                 ("VmRSS", "RssAnon", "RssFile", "RssShmem"))
            rollup = _kib_fields(Path(f"/proc/{pid}/smaps_rollup"), ("Pss",))
        except (OSError, ValueError, IndexError):
            continue  # it ended while being read
        if "VmRSS" not in status:  # a process that is exiting
            continue
        processes.append({"pid": pid, "name": process_name(pid), "rss": status["VmRSS"],
                          "anon": status.get("RssAnon", 0), "file": status.get("RssFile", 0),
                          "shmem": status.get("RssShmem", 0), "pss": rollup.get("Pss", 0)})
    totals = {k: sum(p[k] for p in processes) for k in ("rss", "anon", "file", "shmem", "pss")}
    return {"processes": processes, **totals}


def shm_prefix(server_pid: int) -> str:
    """The Python backend's shm-region prefix run_triton.sh gives the embedded server
    (triton_bls_<its own pid>_); TritonServer's process is that run_triton.sh."""
    return f"triton_bls_{server_pid}_"


def shm_usage(prefix: str, root: Path = Path("/dev/shm")) -> dict:
    """The server's shared-memory files (name starts with prefix): count, apparent size
    (what the regions were sized to) and allocated bytes (pages in memory); and df's
    used bytes of the whole /dev/shm (every process on the machine)."""
    files = apparent = allocated = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        entries = []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        files += 1
        apparent += st.st_size
        allocated += st.st_blocks * 512
    try:
        vfs = os.statvfs(root)
        df_used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    except OSError:
        df_used = 0
    return {"files": files, "apparent": apparent, "allocated": allocated, "df_used": df_used}


def memory_snapshot(pgid: int, prefix: str) -> dict:
    return {"time": time.time(), "memory": process_memory(pgid), "shm": shm_usage(prefix)}


# --------------------------------------------------------------------------- the run
@dataclass
class ProtocolStats:
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    errors: Counter = field(default_factory=Counter)  # message -> count (errors + mismatches)


@dataclass
class LoadState:
    total: int
    warmup: int
    deadline: float
    next_index: int = 0
    done: int = 0
    in_flight: int = 0
    stopped_by_deadline: bool = False
    stats: dict[str, ProtocolStats] = field(default_factory=lambda: {p: ProtocolStats()
                                                                     for p in PROTOCOLS})
    references: dict[tuple[int, int], dict[str, str]] = field(default_factory=dict)
    mismatch_examples: list[str] = field(default_factory=list)


def error_text(error: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        return str(error)[:300]
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"[:300]


class LoadRun:
    """The workers of both protocols, the warm-up barrier and the memory sampler."""

    def __init__(self, server, images: list[LoadImage], parameter_sets: list[dict],
                 args: argparse.Namespace):
        self.server = server
        self.images = images
        self.parameter_sets = parameter_sets  # the dense set last
        self.args = args
        self.pgid = server.pid
        self.prefix = shm_prefix(server.pid)
        self.state = LoadState(args.requests, args.warmup,
                               time.monotonic() + args.max_seconds)
        self.samples: list[dict] = []
        self.server_stats: dict[str, dict] = {}  # phase -> Triton's inference statistics
        self.server_config = ""  # how the server runs mask_rcnn and pipeline_bls
        self.before: dict | None = None
        self.after: dict | None = None
        self.start = self.warm_end = self.end = 0.0
        self._paused = asyncio.Event()  # set: workers may take requests
        self._paused.set()
        self._barrier = 0 < args.warmup < args.requests  # the warm-up pause still to come
        self._idle = asyncio.Event()

    # ---- memory
    async def _snapshot(self, phase: str) -> dict:
        snap = await asyncio.to_thread(memory_snapshot, self.pgid, self.prefix)
        snap.update(phase=phase, done=self.state.done, in_flight=self.state.in_flight,
                    elapsed_s=time.perf_counter() - self.start)
        self.samples.append(snap)
        return snap

    async def _statistics(self, phase: str, client) -> None:
        """Triton's per-model inference statistics (counts and cumulative times)."""
        try:
            self.server_stats[phase] = await client.get_inference_statistics()
        except Exception as e:  # a figure for the report, never a reason to stop
            self.server_stats[phase] = {"error": error_text(e)}

    async def _sampler(self) -> None:
        last_print = time.monotonic()
        while True:
            await asyncio.sleep(self.args.sample_every)
            snap = await self._snapshot("load")
            if time.monotonic() - last_print >= self.args.progress_every:
                last_print = time.monotonic()
                s = self.state
                failed = sum(p.failed for p in s.stats.values())
                rate = s.done / max(snap["elapsed_s"], 1e-9)
                print(f"  {s.done}/{s.total} answered, {failed} failed, {rate:.1f} req/s; "
                      f"server RSS {fmt_bytes(snap['memory']['rss'])}, /dev/shm regions "
                      f"{fmt_bytes(snap['shm']['allocated'])}", file=sys.stderr, flush=True)

    async def _quiesce(self) -> None:
        """Wait until no request is in flight, then let the server settle (background
        monitoring events, freed buffers)."""
        while self.state.in_flight:
            self._idle.clear()
            await self._idle.wait()
        await asyncio.sleep(self.args.settle)

    # ---- requests
    def _take(self) -> Job | str | None:
        """The next job; None when there is none left; "pause" at the warm-up barrier."""
        s = self.state
        if s.next_index >= s.total:
            return None
        if self._barrier and s.next_index >= s.warmup:
            self._barrier = False
            self._paused.clear()
            return "pause"
        if time.monotonic() > s.deadline:
            s.stopped_by_deadline = True
            return None
        job = schedule(s.next_index, len(self.images), len(self.parameter_sets) - 1,
                       self.args.dense_every)
        s.next_index += 1
        s.in_flight += 1
        return job

    def _check(self, job: Job, det) -> str | None:
        """None when the answer equals the reference of its combination (or becomes
        it); else the mismatch message."""
        key = (job.image, job.parameters)
        fp = fingerprint(det)
        reference = self.state.references.setdefault(key, fp)
        if reference is fp:
            return None
        differ = [k for k in fp if fp[k] != reference[k]]
        if not differ:
            return None
        return "mismatch with the first answer: " + ", ".join(differ)

    async def _worker(self, protocol: str, client, module, served) -> None:
        from client.cli import make_input
        from client.results import Detections

        s = self.state
        stats = s.stats[protocol]
        timeout = self.args.request_timeout
        while True:
            await self._paused.wait()
            job = self._take()
            if job is None:
                return
            if job == "pause":
                continue
            params = self.parameter_sets[job.parameters] or None
            tensor = make_input(module, self.images[job.image].data, served.batched)
            try:
                start = time.perf_counter()
                if protocol == "grpc":
                    result = await client.infer(PIPELINE_NAME, [tensor], parameters=params,
                                                client_timeout=timeout)
                else:
                    result = await asyncio.wait_for(
                        client.infer(PIPELINE_NAME, [tensor], parameters=params), timeout)
                elapsed = time.perf_counter() - start
                problem = self._check(job, Detections.from_result(result, served.batched))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # counted; the run goes on
                problem, elapsed = error_text(e), None
            if problem is None:
                stats.ok += 1
                stats.latencies.append(elapsed)
            else:
                stats.failed += 1
                stats.errors[problem] += 1
                if problem.startswith("mismatch") and len(s.mismatch_examples) < 20:
                    s.mismatch_examples.append(
                        f"request {job.index} ({protocol}): image "
                        f"{self.images[job.image].name}, parameters "
                        f"{self.parameter_sets[job.parameters]}: {problem}")
            s.in_flight -= 1
            s.done += 1
            if not s.in_flight:
                self._idle.set()

    async def run(self) -> None:
        import tritonclient.grpc.aio as grpc_aio
        import tritonclient.http.aio as http_aio

        from client.cli import served_model

        per_protocol = {"grpc": (self.args.concurrency + 1) // 2,
                        "http": self.args.concurrency // 2}
        grpc_client = grpc_aio.InferenceServerClient(self.server.grpc_url)
        http_client = http_aio.InferenceServerClient(
            self.server.http_url, conn_limit=max(per_protocol["http"], 1),
            conn_timeout=self.args.request_timeout)
        clients = {"grpc": (grpc_client, grpc_aio), "http": (http_client, http_aio)}
        sampler = None
        try:
            served = {p: await served_model(c, p, PIPELINE_NAME) for p, (c, _) in clients.items()}
            self.samples.append({**await asyncio.to_thread(memory_snapshot, self.pgid, self.prefix),
                                 "phase": "start", "done": 0, "in_flight": 0, "elapsed_s": 0.0})
            self.server_config = await describe_server(http_client)
            await self._statistics("start", http_client)
            self.start = time.perf_counter()
            sampler = asyncio.create_task(self._sampler())
            workers = [asyncio.create_task(self._worker(p, *clients[p], served[p]))
                       for p, n in per_protocol.items() for _ in range(n)]
            if self._barrier:
                # Warm-up: once --warmup requests are handed out, workers take no more;
                # "before" is measured with nothing in flight, then the run resumes.
                while self._paused.is_set() and not all(w.done() for w in workers):
                    await asyncio.sleep(0.05)
                if not self._paused.is_set():
                    await self._quiesce()
                    self.before = await self._snapshot("before")
                    await self._statistics("before", http_client)
                    self.warm_end = time.perf_counter()
                    self._paused.set()
            await asyncio.gather(*workers)
            self.end = time.perf_counter()
            await self._quiesce()
            self.after = await self._snapshot("after")
            await self._statistics("after", http_client)
            if self.before is None:  # too few requests for a warm-up: no growth figures
                self.warm_end = self.start
        finally:
            if sampler is not None:
                sampler.cancel()
                try:
                    await sampler
                except (asyncio.CancelledError, Exception):
                    pass
            await grpc_client.close()
            await http_client.close()


async def describe_server(client) -> str:
    """mask_rcnn's instances and torch threads, pipeline_bls's batching (HTTP aio client)."""
    parts = []
    for name in ("mask_rcnn", PIPELINE_NAME):
        try:
            config = await client.get_model_config(name)
        except Exception as e:
            parts.append(f"{name}: config unreadable ({error_text(e)})")
            continue
        groups = ", ".join(f"{g.get('count', 1)}x {g.get('kind', '?')}"
                           for g in config.get("instance_group", []))
        text = f"{name}: {config.get('backend') or config.get('platform')}, instances {groups}"
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if "intra_op_threads" in params:
            threads = params["intra_op_threads"]
            default = " (torch default)" if threads in ("", "0") else ""
            text += f", intra_op_threads {threads}{default}"
        if config.get("max_batch_size"):
            delay = config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0)
            text += f", max_batch_size {config['max_batch_size']}, queue delay {delay} us"
        parts.append(text)
    return "; ".join(parts)


# --------------------------------------------------------------------------- report
def percentiles_ms(seconds: list[float]) -> dict:
    if not seconds:
        return {f"p{q}_ms": None for q in PERCENTILES} | {"max_ms": None, "mean_ms": None}
    ms = np.asarray(seconds) * 1000
    return ({f"p{q}_ms": float(np.percentile(ms, q)) for q in PERCENTILES}
            | {"max_ms": float(ms.max()), "mean_ms": float(ms.mean())})


def growth(before: float, after: float) -> float | None:
    return None if not before else after / before - 1


def _trend(samples: list[dict], key) -> float | None:
    """Least-squares slope of key(sample) against requests answered, per 1000 requests,
    over the samples from "before" on (the whole run without a warm-up)."""
    started = [i for i, s in enumerate(samples) if s["phase"] == "before"]
    points = [(s["done"], key(s)) for s in samples[started[0] if started else 0:]]
    if len(points) < 3 or len({x for x, _ in points}) < 2:
        return None
    x, y = np.asarray(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 1000)


MEMORY_MEASURES = (
    # name, key, in the verdict
    ("server RSS (sum of VmRSS)", lambda s: s["memory"]["rss"], True),
    ("  of which anonymous", lambda s: s["memory"]["anon"], False),
    ("  of which shmem", lambda s: s["memory"]["shmem"], False),
    ("server PSS (shared pages once)", lambda s: s["memory"]["pss"], False),
    ("/dev/shm regions, allocated", lambda s: s["shm"]["allocated"], True),
    ("/dev/shm regions, apparent size", lambda s: s["shm"]["apparent"], False),
    ("df /dev/shm used (machine-wide)", lambda s: s["shm"]["df_used"], False),
)


STAT_MODELS = (PIPELINE_NAME, "mask_rcnn", "monitoring")


def server_timing(start: dict, end: dict) -> dict:
    """Per model, between two inference-statistics readings: requests, executions
    (batches), and the mean per request of the queue time, the compute time and the
    whole (Triton's "success" duration)."""
    def by_name(stats):
        return {m["name"]: m for m in stats.get("model_stats", [])}

    first, last = by_name(start), by_name(end)
    out = {}
    for name in STAT_MODELS:
        if name not in first or name not in last:
            continue
        a, b = first[name], last[name]

        def delta(key, field):
            return int(b["inference_stats"][key][field]) - int(a["inference_stats"][key][field])

        n = delta("success", "count")
        out[name] = {
            "requests": n, "failed": delta("fail", "count"),
            "executions": int(b.get("execution_count", 0)) - int(a.get("execution_count", 0)),
            "queue_ms": delta("queue", "ns") / n / 1e6 if n else None,
            "compute_ms": (delta("compute_input", "ns") + delta("compute_infer", "ns")
                           + delta("compute_output", "ns")) / n / 1e6 if n else None,
            "total_ms": delta("success", "ns") / n / 1e6 if n else None,
        }
    return out


def summarise(run: LoadRun, images: list[LoadImage], repo: Repository) -> dict:
    s = run.state
    wall = run.end - run.start
    measured = run.end - run.warm_end
    protocols = {}
    for p, st in s.stats.items():
        protocols[p] = {"ok": st.ok, "failed": st.failed, **percentiles_ms(st.latencies),
                        "errors": dict(st.errors.most_common())}
    ok = sum(st.ok for st in s.stats.values())
    failed = sum(st.failed for st in s.stats.values())
    all_latencies = [x for st in s.stats.values() for x in st.latencies]
    memory = {}
    if run.before is not None and run.after is not None:
        for name, key, judged in MEMORY_MEASURES:
            loaded = [key(x) for x in run.samples if x["phase"] != "start"]
            b, a = key(run.before), key(run.after)
            memory[name.strip()] = {"before": b, "after": a, "max": max(loaded),
                                    "growth": growth(b, a), "judged": judged,
                                    "trend_per_1000": _trend(run.samples, key)}
    processes = {}
    for phase, snap in (("before", run.before), ("after", run.after)):
        if snap is not None:
            for proc in snap["memory"]["processes"]:
                processes.setdefault(proc["name"], {})[phase] = proc["rss"]
    stats = run.server_stats
    timing_from = "before" if "before" in stats else "start"
    timing = (server_timing(stats[timing_from], stats["after"])
              if timing_from in stats and "after" in stats
              and "error" not in stats[timing_from] and "error" not in stats["after"] else {})
    verdicts = {"failures": failed == FAILURES_TARGET and ok + failed == s.total}
    for name, m in memory.items():
        if m["judged"]:
            verdicts[name] = m["growth"] is not None and m["growth"] < GROWTH_TARGET
    return {
        "repository": str(repo.path), "exported": repo.exported, "export_s": repo.export_s,
        "model": {"min_size": repo.meta.min_size, "max_size": repo.meta.max_size,
                  "source": repo.meta.source, "weights": repo.meta.weights},
        "requests": {"planned": s.total, "sent": s.next_index, "answered_ok": ok,
                     "failed": failed, "warmup": min(s.warmup, s.total),
                     "stopped_by_max_seconds": s.stopped_by_deadline},
        "concurrency": {"grpc": (run.args.concurrency + 1) // 2, "http": run.args.concurrency // 2},
        "images": [{"name": i.name, "bytes": len(i.data)} for i in images],
        "parameter_sets": run.parameter_sets, "dense_every": run.args.dense_every,
        "combinations_checked": len(s.references),
        "wall_s": wall, "throughput_rps": (ok + failed) / wall if wall > 0 else None,
        "throughput_after_warmup_rps": ((ok + failed - (s.warmup if run.before else 0))
                                        / measured if measured > 0 else None),
        "latency": {"all": percentiles_ms(all_latencies), **protocols},
        "mismatch_examples": s.mismatch_examples,
        "memory": memory, "processes_rss": processes,
        "server_timing": {"from": timing_from, "models": timing},
        "server_config": run.server_config,
        "samples": [{k: v for k, v in x.items() if k != "memory"}
                    | {"rss": x["memory"]["rss"], "pss": x["memory"]["pss"],
                       "anon": x["memory"]["anon"], "processes": len(x["memory"]["processes"])}
                    for x in run.samples],
        "verdicts": verdicts,
    }


def print_report(report: dict) -> None:
    r = report["requests"]
    print(f"\n== Load: {r['planned']} requests to {PIPELINE_NAME}, concurrency "
          f"{report['concurrency']['grpc']} gRPC + {report['concurrency']['http']} HTTP")
    m = report["model"]
    print(f"  model: {m['source']}, {m['weights'] or 'weights ?'}, resize shortest edge "
          f"{m['min_size']}, longest <= {m['max_size']}; repository {report['repository']}"
          + (f" (exported in {report['export_s']:.0f} s)" if report["exported"] else ""))
    print(f"  server: {report['server_config']}")
    print("  images: " + ", ".join(f"{i['name']} {fmt_bytes(i['bytes'])}"
                                   for i in report["images"]))
    sets = report["parameter_sets"]
    print("  parameters cycled: " + "; ".join(json.dumps(p) for p in sets[:-1])
          + f"; every {report['dense_every']}th request: {json.dumps(sets[-1])}")
    print(f"  sent {r['sent']}, answered ok {r['answered_ok']}, failed {r['failed']}"
          f"{' (stopped by --max-seconds)' if r['stopped_by_max_seconds'] else ''}; "
          f"{report['combinations_checked']} image+parameter combinations checked against "
          f"their first answer")
    tput = report["throughput_rps"]
    tput_w = report["throughput_after_warmup_rps"]
    print(f"  wall {report['wall_s']:.0f} s; throughput {tput:.2f} req/s"
          + (f" ({tput_w:.2f} req/s after the warm-up)" if tput_w else ""))

    rows = []
    for p in ("all", *PROTOCOLS):
        lat = report["latency"][p]
        ok = "" if p == "all" else report["latency"][p]["ok"]
        failed = "" if p == "all" else report["latency"][p]["failed"]
        rows.append([p, ok, failed] + [("-" if lat[k] is None else f"{lat[k]:.0f}")
                                        for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")])
    print("\n" + table(["protocol", "ok", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows))
    timing = report["server_timing"]["models"]
    if timing:
        rows = [[name, t["requests"], t["executions"],
                 *("-" if t[k] is None else f"{t[k]:.0f}" for k in ("queue_ms", "compute_ms",
                                                                    "total_ms"))]
                for name, t in timing.items()]
        span = "after the warm-up" if report["server_timing"]["from"] == "before" else "whole run"
        print(f"\n  server side (Triton's statistics, {span}; means per request):\n"
              + table(["model", "requests", "executions", "queue ms", "compute ms", "total ms"],
                      rows))
    errors = Counter()
    for p in PROTOCOLS:
        for message, count in report["latency"][p]["errors"].items():
            errors[f"[{p}] {message}"] += count
    if errors:
        print("\n  failures by message:")
        for message, count in errors.most_common():
            print(f"    {count:6d}  {message}")
        for example in report["mismatch_examples"][:5]:
            print(f"    e.g. {example}")

    if report["memory"]:
        print(f"\n  memory: before = after {r['warmup']} warm-up requests, after = at the end "
              f"(both idle); max over samples under load; trend = slope per 1000 requests "
              f"after warm-up")
        rows = []
        for name, mem in report["memory"].items():
            g = mem["growth"]
            trend = mem["trend_per_1000"]
            rows.append([name, fmt_bytes(mem["before"]), fmt_bytes(mem["after"]),
                         fmt_bytes(mem["max"]), "-" if g is None else f"{g:+.2%}",
                         "-" if trend is None else f"{'+' if trend >= 0 else '-'}"
                                                  f"{fmt_bytes(abs(trend))}",
                         f"< {GROWTH_TARGET:.0%}" if mem["judged"] else "(info)",
                         verdict(report["verdicts"][name]) if mem["judged"] else ""])
        print(table(["measure", "before", "after", "max", "growth", "trend/1000", "goal", ""],
                    rows))
        rows = [[name, fmt_bytes(v.get("before", 0)), fmt_bytes(v.get("after", 0))]
                for name, v in sorted(report["processes_rss"].items())]
        print("\n  RSS by process:\n" + table(["process", "before", "after"], rows))
    else:
        print("\n  memory: no growth figures (fewer requests than --warmup)")
    print(f"\n  failures: {r['failed']} (goal {FAILURES_TARGET}) "
          f"{verdict(report['verdicts']['failures'])}")


# --------------------------------------------------------------------------- export
def prepare_repository(args, scratch: Path) -> Repository:
    """--repository with an exported model: serve it as it is. Otherwise export a small
    model (seeded random weights, --min-size/--max-size/--proposals/--detections) into
    --repository (kept) or a scratch folder (removed at the end)."""
    export_args = ["--proposals", str(args.proposals), "--detections", str(args.detections)]
    if args.intra_op_threads is not None:
        export_args += ["--set", f'mask_rcnn=parameters {{ key: "intra_op_threads" value '
                                 f'{{ string_value: "{args.intra_op_threads}" }} }}']
    return pipeline_prepare_repository(args, scratch, export_args)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000, help="requests in all (default 10000)")
    p.add_argument("--concurrency", type=int, default=8,
                   help="requests in flight: half over gRPC (the odd one too), half over "
                        "HTTP (default 8)")
    p.add_argument("--warmup", type=int, default=500,
                   help="requests before the 'before' memory figures (default 500)")
    p.add_argument("--max-seconds", type=float, default=3600,
                   help="safety bound: no new request after this (default 3600)")
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="also send this image (repeatable); generated scenes are always sent")
    p.add_argument("--dense-every", type=int, default=50,
                   help="every Nth request asks for dense masks (0: never; default 50)")
    p.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                   help=f"export: shortest edge (default {DEFAULT_MIN_SIZE})")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                   help=f"export: longest edge at most (default {DEFAULT_MAX_SIZE})")
    p.add_argument("--proposals", type=int, default=DEFAULT_PROPOSALS,
                   help=f"export: RPN proposals per image (default {DEFAULT_PROPOSALS})")
    p.add_argument("--detections", type=int, default=DEFAULT_DETECTIONS,
                   help=f"export: detections per image at most (default {DEFAULT_DETECTIONS})")
    p.add_argument("--intra-op-threads", type=int, default=DEFAULT_INTRA_OP_THREADS,
                   help="export: mask_rcnn's torch intra-op threads on the embedded server "
                        f"(0: torch's default, one per core; default {DEFAULT_INTRA_OP_THREADS})")
    p.add_argument("--repository", type=Path,
                   help="an exported repository to serve as it is (the export options are "
                        "then ignored); a new or empty folder is exported into and kept. "
                        "Default: export into a temporary folder")
    p.add_argument("--sample-every", type=float, default=5.0,
                   help="seconds between memory samples under load (default 5)")
    p.add_argument("--progress-every", type=float, default=30.0,
                   help="seconds between progress lines on stderr (default 30)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds idle before the before/after memory figures (default 2)")
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds a request may take before it counts as failed (default 300)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 2:
        p.error("need --requests >= 1 and --concurrency >= 2 (one per protocol at least)")
    if args.warmup < 0 or args.dense_every < 0 or args.sample_every <= 0 or args.max_seconds <= 0:
        p.error("need --warmup >= 0, --dense-every >= 0, --sample-every > 0, --max-seconds > 0")
    check_images(p, args.image)
    return args


def main(argv: list[str] | None = None) -> int:
    from server.launcher import ServerFailed, TritonServer

    args = parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM)
    command, machine = begin("benchmarks.load", argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"date: {started}", flush=True)

    images = all_images(args.image)
    parameter_sets = [dict(p) for p in PARAMETER_SETS] + [dict(DENSE_PARAMETERS)]
    scratch = Path(tempfile.mkdtemp(prefix="bench-load-"))
    server = None
    server_pid = None
    leftover = None
    try:
        repo = prepare_repository(args, scratch)
        server = TritonServer(repo.path, log=scratch / "triton.log")
        print(f"starting tritonserver (embedded) on {repo.path} ...", flush=True)
        start = time.perf_counter()
        server.start()
        print(f"server ready in {time.perf_counter() - start:.0f} s (grpc {server.grpc_url}, "
              f"http {server.http_url}, pid {server.pid})", flush=True)
        server_pid = server.pid
        run = LoadRun(server, images, parameter_sets, args)
        print(f"sending {args.requests} requests ({args.warmup} warm-up) ...", flush=True)
        asyncio.run(run.run())
        report = summarise(run, images, repo)
    except BaseException as e:
        if server is not None and not isinstance(e, ServerFailed):
            print(f"server log (tail):\n{server.log_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
            if server_pid is not None:  # what the stopped server left in /dev/shm
                leftover = shm_usage(shm_prefix(server_pid))
        shutil.rmtree(scratch, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)

    report = {"command": command, "date": started,
              "ended": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": machine, "server_pid": server_pid, **report,
              "targets": {"failures": FAILURES_TARGET, "growth_lt": GROWTH_TARGET},
              "loadavg_end": os.getloadavg()}
    print_report(report)
    if leftover is not None:
        report["shm_left_after_stop"] = leftover
        print(f"  /dev/shm after the server stopped: {leftover['files']} of its region file(s) "
              f"left ({fmt_bytes(leftover['allocated'])} allocated)")
    print("  load average at end: " + " ".join(f"{v:.2f}" for v in report["loadavg_end"]))
    passed = sum(report["verdicts"].values())
    print(f"goals: {passed}/{len(report['verdicts'])} PASS")
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    run_main(main)
