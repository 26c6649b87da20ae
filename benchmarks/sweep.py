"""python -m benchmarks.sweep: throughput and latency over concurrency x instance configurations,
for pipeline_bls, the ensemble infer_pipeline and the bare mask_rcnn, in one run.

  python -m benchmarks.sweep --min-size 320 --concurrency 1,2,4 --config 1x2 --config 2x1 --requests 20
  python -m benchmarks.sweep --repository build/repository --image photo.jpg --latency-budget-ms 8000
  python -m benchmarks.sweep --config "1x2:2,workers=2,delay=5000" --targets bls,ensemble

For each configuration: a scratch copy of the repository is tuned with export/tune.py,
an embedded tritonserver is started on it (server.launcher.TritonServer, stopped by its
own process group), every target is warmed up, then for each concurrency level and target
a closed loop of C clients (tritonclient.grpc.aio, one request in flight each) sends
--requests requests or runs --max-seconds, whichever ends first. Per point: throughput
(answered images per second, first send to last answer), latency p50/p90/p99, errors,
server CPU (the server's process group, from /proc) and where the time went inside the
server (Triton's statistics: queue and compute per model, pipeline_bls batch size; for
pipeline_bls's own stages its metrics, bls/backend/metrics.py, as Triton's statistics for it end
when its execute returns).

Configurations, compact: ``MxT[:B][,key=value...]``

  M  mask_rcnn instances         T  torch intra-op threads per instance (0: torch default)
  B  pipeline_bls instances (1); the ensemble's preprocess and postprocess get B too
  keys: workers=N (pipeline_bls worker_threads), delay=US (pipeline_bls max queue delay),
        batch=N (pipeline_bls max_batch_size), stages=N (preprocess/postprocess instances)

With --stand-in MS[,MS...] mask_rcnn is benchmarks/standin.py, answering after each
latency (a GPU's milliseconds, which this CPU cannot show): the configurations run at each
latency, and the printout adds pipeline_bls's in-process compute, each pipeline's
efficiency against it (concurrency 1 also paired), the CPU per image of each server
process and, per latency, pipeline_bls instances and worker threads per model instance,
which `python -m export tune --from-sweep` applies (docs/benchmarks.md).

Defaults for a 2-core machine: 1x2, 2x1, 1x2:2, 2x1:2 (with --stand-in: 1x1:1,workers=1,
1x1:1, 1x1:2,workers=1, 1x1:2). Targets: bls (pipeline_bls, image
bytes in), ensemble (infer_pipeline, image bytes in), bare (mask_rcnn, fed the resized
uint8 tensor bls.pipeline.prepare makes, as benchmarks/pipeline.py does).

Output (--out, default build/sweep): sweep.csv (one row per point), sweep.json (all of it,
raw latencies too), sweep.png (throughput and p99 against concurrency), triton-<i>.log.
Printed: the table, pipeline_bls against the ensemble at every concurrency with where
the time went, and the recommended configuration: the best pipeline_bls throughput whose
p99 is within --latency-budget-ms (and no errors). Speed goals live here, never in tests.
Numbers from a shared or loaded machine are noise: the load average is recorded per point.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from benchmarks.pipeline import (REQUEST_TIMEOUT_S, BenchImage, check_images, grpc_bytes_input,
                                 load_images, model_file, prepare_repository, rotated, begin,
                                 run_main, table)
from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, PIPELINE_NAME,
                          POSTPROCESS_NAME, PREPROCESS_NAME)
from bls.contract.parameters import PIPELINE_PARAMETERS
from bls.backend.metrics import DURATION_METRIC, OUTCOMES, REQUESTS_METRIC, STAGES
from client.metrics import scrape, value
from export.tune import TuneOptions, tune

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ("1x2", "2x1", "1x2:2", "2x1:2")
DEFAULT_CONCURRENCY = (1, 2, 4, 8)
# With --stand-in: one stand-in instance; one or two pipeline_bls instances, one or two
# worker threads each (what the recommendation chooses from).
STANDIN_CONFIGS = ("1x1:1,workers=1", "1x1:1", "1x1:2,workers=1", "1x1:2")
DEFAULT_WORKER_THREADS = PIPELINE_PARAMETERS.read({})["worker_threads"]
TARGETS = {"bls": PIPELINE_NAME, "ensemble": ENSEMBLE_NAME, "bare": MODEL_NAME}
# Models whose statistics explain each target's time.
PATHS = {"bls": (PIPELINE_NAME, MODEL_NAME),
         "ensemble": (PREPROCESS_NAME, MODEL_NAME, POSTPROCESS_NAME),
         "bare": (MODEL_NAME,)}
STAGES_KEY = "pipeline_bls stages"  # Point.breakdown key of stage_means()
EQUAL_WITHIN = 0.03  # |bls / ensemble - 1| below this reads as "equal within noise"
SPEC = re.compile(r"^(?P<m>\d+)x(?P<t>\d+)(?::(?P<b>\d+))?(?P<extra>(?:,[a-z]+=\d+)*)$")
EXTRA_KEYS = {"workers": "worker_threads", "delay": "delay_us", "batch": "max_batch_size",
              "stages": "stage_instances"}


# --------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class SweepConfig:
    spec: str
    rcnn_instances: int
    rcnn_threads: int
    bls_instances: int = 1
    stage_instances: int | None = None  # None: as bls_instances
    worker_threads: int | None = None
    delay_us: int | None = None
    max_batch_size: int | None = None
    standin_ms: float | None = None  # mask_rcnn is benchmarks/standin.py with this latency

    @property
    def stages(self) -> int:
        return self.bls_instances if self.stage_instances is None else self.stage_instances

    @property
    def label(self) -> str:
        if self.standin_ms is not None:
            text = f"stand-in {self.standin_ms:g} ms x{self.rcnn_instances}, bls {self.bls_instances}"
        else:
            threads = "default" if self.rcnn_threads == 0 else f"{self.rcnn_threads}t"
            text = f"rcnn {self.rcnn_instances}x{threads}, bls {self.bls_instances}"
        if self.stages != self.bls_instances:
            text += f", stages {self.stages}"
        for name, short in (("worker_threads", "workers"), ("delay_us", "delay"),
                            ("max_batch_size", "batch")):
            if getattr(self, name) is not None:
                text += f", {short} {getattr(self, name)}"
        return text

    @property
    def max_instances(self) -> int:
        return max(self.rcnn_instances, self.bls_instances, self.stages)

    def tunings(self) -> list[tuple[str, TuneOptions]]:
        """What export/tune.py applies to the scratch repository."""
        bls = TuneOptions(instances=self.bls_instances, worker_threads=self.worker_threads,
                          max_queue_delay_us=self.delay_us, max_batch_size=self.max_batch_size)
        rcnn = (TuneOptions(instances=self.rcnn_instances) if self.standin_ms is not None else
                TuneOptions(instances=self.rcnn_instances, intra_op_threads=self.rcnn_threads))
        return [
            (MODEL_NAME, rcnn),
            (PIPELINE_NAME, bls),
            (PREPROCESS_NAME, TuneOptions(instances=self.stages)),
            (POSTPROCESS_NAME, TuneOptions(instances=self.stages)),
        ]

    def tune_commands(self, repository: str = "REPO") -> list[str]:
        lines = []
        for model, options in self.tunings():
            args = [a for name, value in options.given().items()
                    for a in ("--" + name.replace("_", "-"), str(value))]
            lines.append(shlex.join(["python", "-m", "export", "tune", "--repository", repository,
                                     "--model", model, *args]))
        return lines


def parse_config(text: str) -> SweepConfig:
    """``MxT[:B][,key=value...]`` -> SweepConfig; ValueError naming what is wrong."""
    spec = text.strip().replace(" ", "")
    match = SPEC.match(spec)
    if not match:
        raise ValueError(f"configuration {text!r}: expected MxT[:B][,key=value...], e.g. "
                         f"'1x2', '2x1:2', '1x2:2,workers=2,delay=5000'")
    values = {"rcnn_instances": int(match["m"]), "rcnn_threads": int(match["t"]),
              "bls_instances": int(match["b"] or 1)}
    for item in filter(None, match["extra"].split(",")):
        key, value = item.split("=")
        if key not in EXTRA_KEYS:
            raise ValueError(f"configuration {text!r}: unknown key {key!r} "
                             f"(keys: {', '.join(EXTRA_KEYS)})")
        values[EXTRA_KEYS[key]] = int(value)
    config = SweepConfig(spec, **values)
    if config.rcnn_instances < 1 or config.bls_instances < 1 or config.stages < 1:
        raise ValueError(f"configuration {text!r}: instance counts must be at least 1")
    return config


def _number_list(cast, minimum, text: str) -> tuple:
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected numbers >= {minimum}, got {text!r}")
    return values


def int_list(text: str) -> tuple[int, ...]:
    """Concurrency levels: whole numbers >= 1."""
    return _number_list(int, 1, text)


def float_list(text: str) -> tuple[float, ...]:
    """Stand-in latencies, ms: numbers >= 0."""
    return _number_list(float, 0, text)


# --------------------------------------------------------------------------- images
def generated_images(sizes: list[str]) -> list[BenchImage]:
    from export import samples

    images = []
    for i, size in enumerate(sizes):
        width, height = (int(v) for v in size.lower().split("x"))
        data = samples.encode(samples.scene(height, width, seed=i), ".jpg")
        images.append(BenchImage(f"scene{width}x{height}.jpg (generated)", data))
    return images


@dataclass
class Target:
    name: str  # bls | ensemble | bare
    model: str
    inputs: list  # one list of InferInput per image


def build_targets(names: list[str], images: list[BenchImage], meta, pipe_batch: bool,
                  ens_batch: bool) -> list[Target]:
    import tritonclient.grpc as grpcclient

    from bls.pipeline.steps import prepare

    targets = []
    for name in names:
        if name == "bare":
            inputs = []
            for image in images:
                model_input = prepare(image.data, meta).model_input
                tensor = grpcclient.InferInput(MODEL_INPUT.name, list(model_input.shape),
                                               MODEL_INPUT.dtype)
                tensor.set_data_from_numpy(model_input)
                inputs.append([tensor])
        else:
            batch = [1] if (pipe_batch if name == "bls" else ens_batch) else []
            inputs = [[grpc_bytes_input(grpcclient, image.data, batch)] for image in images]
        targets.append(Target(name, TARGETS[name], inputs))
    return targets


# --------------------------------------------------------------------------- measuring
def process_cpu_seconds(pgid: int) -> dict[str, float]:
    """utime + stime of each live process of a process group (the server's), by name:
    a Python model's stub by its model (from the model.py path on its command line),
    other processes by their executable's name."""
    from server.launcher import live_members

    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in live_members(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        models = [a.decode(errors="replace") for a in argv if a.endswith(b"/model.py")]
        name = (Path(models[0]).parent.parent.name if models
                else Path(argv[0].decode(errors="replace")).name)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def model_statistics(response) -> dict[str, dict[str, float]]:
    """Triton's cumulative statistics per model (version summed)."""
    out: dict[str, dict[str, float]] = {}
    for s in response.model_stats:
        st = s.inference_stats
        entry = out.setdefault(s.name, Counter())
        entry["success"] += st.success.count
        entry["fail"] += st.fail.count
        entry["queue_ns"] += st.queue.ns
        entry["compute_ns"] += st.compute_input.ns + st.compute_infer.ns + st.compute_output.ns
        entry["executions"] += s.execution_count
        entry["inferences"] += s.inference_count
    return out


def answered(stats: dict, model: str) -> float:
    entry = stats.get(model, {})
    return entry.get("success", 0) + entry.get("fail", 0)


async def settled_statistics(client, model: str, expected: float, timeout: float = 5.0) -> dict:
    """Triton's statistics once they count ``expected`` requests of ``model``: it records
    a request when it is released, which can be just after the client has its answer."""
    deadline = time.monotonic() + timeout
    while True:
        stats = model_statistics(await client.get_inference_statistics())
        if answered(stats, model) >= expected or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.01)


def statistics_delta(before: dict, after: dict, models) -> dict[str, dict[str, float]]:
    """Per model: requests answered, mean queue and compute ms per request, mean batch."""
    delta = {}
    for model in models:
        a, b = before.get(model, Counter()), after.get(model, Counter())
        n = (b["success"] + b["fail"]) - (a["success"] + a["fail"])
        executions = b["executions"] - a["executions"]
        delta[model] = {
            "requests": n,
            "queue_ms": (b["queue_ns"] - a["queue_ns"]) / n / 1e6 if n else 0.0,
            "compute_ms": (b["compute_ns"] - a["compute_ns"]) / n / 1e6 if n else 0.0,
            "batch": (b["inferences"] - a["inferences"]) / executions if executions else 0.0,
        }
    return delta


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """pipeline_bls's own request metrics (bls/backend/metrics.py) between two scrapes: requests
    counted and the mean ms per request of each stage. Triton's statistics cannot give
    this: they end when pipeline_bls's execute returns, before its answers are sent."""
    n = sum(value(after, REQUESTS_METRIC, outcome=o) - value(before, REQUESTS_METRIC, outcome=o)
            for o in OUTCOMES)
    out = {"requests": n}
    for stage in STAGES:
        spent = value(after, DURATION_METRIC, stage=stage) - value(before, DURATION_METRIC,
                                                                    stage=stage)
        out[f"{stage}_ms"] = spent / n / 1000 if n else 0.0
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def closed_loop(client, target: Target, concurrency: int, requests: int,
                      max_seconds: float, timeout: float, first: int = 0) -> dict:
    """``concurrency`` clients, each with one request in flight, until ``requests`` were
    sent or ``max_seconds`` passed (no new request after that; those in flight finish)."""
    from tritonclient.utils import InferenceServerException

    latencies: list[float] = []
    errors: Counter = Counter()
    issued = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    last = start

    async def worker() -> None:
        nonlocal issued, last
        while issued < requests and time.perf_counter() < deadline:
            k = first + issued
            issued += 1
            sent = time.perf_counter()
            try:
                await client.infer(target.model, target.inputs[k % len(target.inputs)],
                                   client_timeout=timeout)
                latencies.append(time.perf_counter() - sent)
            except InferenceServerException as e:
                errors[str(e).splitlines()[0][:200]] += 1
            last = time.perf_counter()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "errors": dict(errors), "seconds": last - start,
            "issued": issued}


@dataclass
class Point:
    config: str
    spec: str
    target: str
    model: str
    concurrency: int
    answered: int
    errors: int
    seconds: float
    throughput: float  # answered images per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    server_cpu_ms_per_image: float
    server_cpu_util: float  # server CPU seconds / wall seconds (1.0 = one core busy)
    client_cpu_util: float
    loadavg_1m: float
    # pipeline_bls's in-process compute per image (InProcessCompute), measured with the
    # server idle just before this concurrency level's points; NaN when not measured
    compute_ms: float = float("nan")
    # at concurrency 1 with the stand-in: paired_latency()'s medians
    paired_c1: dict = field(default_factory=dict)
    # CPU ms per answered image by server process (a Python model's stub by its model,
    # tritonserver, ...) and by this load generator ("client")
    cpu_ms_per_image: dict = field(default_factory=dict)
    breakdown: dict = field(default_factory=dict)  # model -> queue/compute ms, batch
    error_messages: dict = field(default_factory=dict)
    latencies_ms: list = field(default_factory=list)

    def row(self) -> dict:
        out = {k: v for k, v in asdict(self).items()
               if k not in ("breakdown", "error_messages", "latencies_ms", "paired_c1",
                            "cpu_ms_per_image")}
        out.update({f"cpu_{k}_ms": v for k, v in self.cpu_ms_per_image.items()})
        out.update({f"paired_c1_{k}": round(v, 3) for k, v in self.paired_c1.items()})
        for model, values in self.breakdown.items():
            if model == STAGES_KEY:
                out.update({f"bls_{k}": round(v, 2) for k, v in values.items()
                            if k.endswith("_ms")})
                continue
            for key in ("queue_ms", "compute_ms"):
                out[f"{model}_{key}"] = round(values[key], 2)
            if model == PIPELINE_NAME:
                out[f"{model}_batch"] = round(values["batch"], 2)
        return out


async def measure_config(server, config: SweepConfig, targets: list[Target],
                         concurrency: list[int], args, compute=None) -> list[Point]:
    """``compute``: an InProcessCompute, measured
    run before each concurrency level with the server idle, so that the efficiency of a
    point divides by a compute measured next to it (this machine's speed drifts)."""
    import tritonclient.grpc.aio as grpc_aio

    pgid = os.getpgid(server.pid)
    client = grpc_aio.InferenceServerClient(server.grpc_url)
    points = []
    try:
        # Warm-up: every instance of every model on every image (TorchScript's profiling
        # executor optimises on the first runs of each instance).
        width = config.max_instances
        for target in targets:
            n = args.warmup * len(target.inputs) * width
            if n:
                done = await closed_loop(client, target, width, n, args.max_seconds * 2,
                                         REQUEST_TIMEOUT_S)
                if done["errors"]:
                    raise RuntimeError(f"warm-up of {target.model} failed: {done['errors']}")
            print(f"  warm-up {target.name}: {n} requests", file=sys.stderr, flush=True)
        for i, c in enumerate(concurrency):
            compute_ms = compute()["mean_ms"] if compute is not None else float("nan")
            paired = {}
            if compute is not None and c == 1:
                for target in targets:
                    if target.name != "bare":
                        paired[target.name] = await paired_latency(
                            client, target, compute, min(args.requests, 100), args.timeout)
            for target in rotated(targets, i):
                load = os.getloadavg()[0]
                before = model_statistics(await client.get_inference_statistics())
                scraped = (await asyncio.to_thread(scrape, server.metrics_url)
                           if target.name == "bls" else None)
                cpu0, client0 = process_cpu_seconds(pgid), time.process_time()
                run = await closed_loop(client, target, c, args.requests, args.max_seconds,
                                        args.timeout, first=i)
                cpu1, client1 = process_cpu_seconds(pgid), time.process_time()
                by_process = {k: (v - cpu0.get(k, 0.0)) for k, v in cpu1.items()}
                cpu0, cpu1 = sum(cpu0.values()), sum(cpu1.values())
                after = await settled_statistics(
                    client, target.model, answered(before, target.model) + run["issued"])
                breakdown = statistics_delta(before, after, PATHS[target.name])
                if target.name == "bls":
                    breakdown[STAGES_KEY] = stage_means(
                        scraped, await asyncio.to_thread(scrape, server.metrics_url))
                ms = [s * 1000 for s in run["latencies"]]
                count, seconds = len(ms), max(run["seconds"], 1e-9)
                point = Point(
                    config=config.label, spec=config.spec, target=target.name,
                    model=target.model, concurrency=c, answered=count,
                    errors=sum(run["errors"].values()), seconds=round(seconds, 3),
                    throughput=count / seconds,
                    p50_ms=percentile(ms, 50), p90_ms=percentile(ms, 90),
                    p99_ms=percentile(ms, 99), mean_ms=float(np.mean(ms)) if ms else float("nan"),
                    max_ms=max(ms) if ms else float("nan"),
                    server_cpu_ms_per_image=(cpu1 - cpu0) * 1000 / count if count else float("nan"),
                    server_cpu_util=(cpu1 - cpu0) / seconds,
                    client_cpu_util=(client1 - client0) / seconds, loadavg_1m=load,
                    compute_ms=compute_ms, paired_c1=paired.get(target.name, {}),
                    cpu_ms_per_image={k: round(v * 1000 / count, 3) for k, v in
                                      by_process.items() if count and v > 0}
                    | ({"client": round((client1 - client0) * 1000 / count, 3)}
                       if count else {}),
                    breakdown=breakdown,
                    error_messages=run["errors"], latencies_ms=[round(v, 2) for v in ms])
                points.append(point)
                print(f"  {config.label} | {target.name:<8} c={c}: {point.throughput:.2f} img/s, "
                      f"p50 {point.p50_ms:.0f} ms, p99 {point.p99_ms:.0f} ms, "
                      f"{count} answered, {point.errors} errors, {seconds:.1f} s, "
                      f"load {load:.2f}", file=sys.stderr, flush=True)
    finally:
        await client.close()
    return points


# --------------------------------------------------------------------------- in process
class InProcessCompute:
    """pipeline_bls's own work per image, in this process on one thread: ``prepare``
    (decode, resize, CHW) and ``finish`` (select, rescale, paste, RLE, answer arrays)
    around the stand-in's outputs for that image."""

    def __init__(self, images: list[BenchImage], meta, detections: int, repeats: int):
        import cv2

        from benchmarks.standin import StandIn
        from bls.contract.parameters import RequestOptions

        from bls.backend.process import keep_freed_memory

        cv2.setNumThreads(1)
        keep_freed_memory()  # as the served models do
        self.images, self.meta, self.repeats = images, meta, repeats
        self.standin = StandIn([s.name for s in meta.outputs], detections,
                               meta.mask_resolution, len(meta.class_names))
        self.options = RequestOptions(meta.score_threshold)

    def one(self, k: int) -> tuple[float, float]:
        """(prepare ms, finish ms) of image k (cycling), once."""
        from bls.pipeline.steps import finish, prepare

        image = self.images[k % len(self.images)]
        t0 = time.perf_counter()
        prepared = prepare(image.data, self.meta)
        t1 = time.perf_counter()
        outputs = self.standin(*prepared.model_input.shape[1:])
        t2 = time.perf_counter()
        finish(outputs, prepared.original_size, self.meta, self.options)
        t3 = time.perf_counter()
        return (t1 - t0) * 1000, (t3 - t2) * 1000

    def __call__(self) -> dict:
        """Medians of ``repeats`` per image after a warm-up, ms; "rate" is images/s on one
        core for requests cycling through the images."""
        per_image = {}
        for k, image in enumerate(self.images):
            self.one(k)
            runs = np.array([self.one(k) for _ in range(self.repeats)])
            row = {"prepare_ms": float(np.median(runs[:, 0])),
                   "finish_ms": float(np.median(runs[:, 1])),
                   "total_ms": float(np.median(runs.sum(axis=1)))}
            per_image[image.name] = row
        mean_ms = float(np.mean([r["total_ms"] for r in per_image.values()]))
        return {"per_image": per_image, "mean_ms": mean_ms, "rate": 1000 / mean_ms,
                "repeats": self.repeats}


async def paired_latency(client, target: Target, compute: InProcessCompute, n: int,
                         timeout: float) -> dict:
    """Concurrency 1, paired: per iteration the in-process compute of an image, then the
    served request for it; medians of the per-iteration latency, compute and their
    difference (this machine's speed drifts by 15 % between seconds: pairs see the same)."""
    rows = []
    for k in range(n):
        prepare_ms, finish_ms = compute.one(k)
        sent = time.perf_counter()
        await client.infer(target.model, target.inputs[k % len(target.inputs)],
                           client_timeout=timeout)
        served_ms = (time.perf_counter() - sent) * 1000
        rows.append((served_ms, prepare_ms + finish_ms))
    rows = np.array(rows)
    return {"pairs": n, "served_ms": float(np.median(rows[:, 0])),
            "compute_ms": float(np.median(rows[:, 1])),
            "over_ms": float(np.median(rows[:, 0] - rows[:, 1]))}


def ideal_throughput(config: SweepConfig, concurrency: int, cores: int, rate: float) -> float:
    """What the machine could do: min(concurrency, cores) x the in-process rate (images/s
    on one core), and no more than the stand-in instances answer (instances / latency)."""
    ideal = min(concurrency, cores) * rate
    if config.standin_ms:
        ideal = min(ideal, config.rcnn_instances * 1000 / config.standin_ms)
    return ideal


def print_efficiency(points: list[Point], configs: list[SweepConfig], cores: int,
                     compute: dict) -> dict:
    """Each pipeline against the in-process compute, and the targets of docs/benchmarks.md."""
    print(f"\n== In process, one thread: prepare + finish per image, median of "
          f"{compute['repeats']}, ms")
    rows = [[name, fmt(r["prepare_ms"], 1), fmt(r["finish_ms"], 1), fmt(r["total_ms"], 1)]
            for name, r in compute["per_image"].items()]
    print(table(["image", "prepare", "finish", "sum"], rows, left=1))
    print(f"  mean {compute['mean_ms']:.1f} ms/img: {compute['rate']:.1f} img/s on one core, "
          f"{cores * compute['rate']:.1f} img/s on {cores} cores (before the servers; each "
          f"point below uses the compute measured just before it)")
    print("\n== Efficiency: throughput / ideal, ideal = min(concurrency, cores) x in-process "
          "rate (and at most stand-in instances / latency); over = mean latency - (in-process "
          "compute + stand-in latency);\n   at concurrency 1 over is paired: the median of "
          "(served latency - in-process compute) over iterations that run one after the other")
    rows, report = [], []
    top = max(p.concurrency for p in points)
    for config in configs:
        for p in (q for q in points if q.config == config.label):
            compute_ms = p.compute_ms if p.compute_ms == p.compute_ms else compute["mean_ms"]
            ideal = ideal_throughput(config, p.concurrency, cores, 1000 / compute_ms)
            over = p.mean_ms - compute_ms - (config.standin_ms or 0)
            if p.paired_c1:  # paired: the same drift on both sides
                over = p.paired_c1["over_ms"] - (config.standin_ms or 0)
            item = {"config": config.label, "target": p.target, "concurrency": p.concurrency,
                    "throughput": p.throughput, "ideal": ideal, "compute_ms": compute_ms,
                    "efficiency": p.throughput / ideal, "over_compute_ms": over}
            verdicts = []
            if p.target == "bls" and config.standin_ms == 0:
                if p.concurrency == 1:
                    item["latency_target_met"] = over <= 5.0
                    verdicts.append(f"c1 latency <= compute + 5 ms: "
                                    f"{'PASS' if over <= 5.0 else 'MISS'}")
                if p.concurrency == top and top >= cores:
                    item["throughput_target_met"] = item["efficiency"] >= 0.85
                    verdicts.append(f"c{top} >= 85 % of cores x rate: "
                                    f"{'PASS' if item['efficiency'] >= 0.85 else 'MISS'}")
            report.append(item)
            if p.target == "bare":
                continue
            rows.append([config.label, p.target, p.concurrency, fmt(p.throughput, 1),
                         fmt(compute_ms, 1), fmt(ideal, 1), f"{item['efficiency']:.0%}",
                         fmt(p.mean_ms, 1), f"{over:+.1f}", "; ".join(verdicts)])
    print(table(["configuration", "target", "conc", "img/s", "compute ms", "ideal",
                 "efficiency", "mean ms", "over", "targets (instant model)"], rows, left=2))
    print(f"\n  where the CPU goes at concurrency {top}, ms per image by process (the "
          f"in-process compute beside it):")
    for p in (q for q in points if q.concurrency == top and q.target != "bare"):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(
            p.cpu_ms_per_image.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        print(f"  - {p.config}, {p.target}: {parts}; compute {p.compute_ms:.1f}")
    return {"in_process": compute, "efficiency": report}


def recommend_per_instance(points: list[Point], configs: list[SweepConfig],
                           budget_ms: float | None) -> list[dict]:
    """Per stand-in latency: pipeline_bls instances and worker_threads per mask_rcnn
    instance, from its best configuration (recommend())."""
    out = []
    for latency in dict.fromkeys(c.standin_ms for c in configs):
        labels = {c.label: c for c in configs if c.standin_ms == latency}
        best, reason = recommend([p for p in points if p.config in labels], budget_ms)
        if best is None:
            out.append({"standin_ms": latency, "note": reason})
            continue
        config = labels[best.config]
        workers = config.worker_threads or DEFAULT_WORKER_THREADS
        out.append({"standin_ms": latency, "config": config.label,
                    "throughput": best.throughput, "p99_ms": best.p99_ms,
                    "concurrency": best.concurrency,
                    "bls_instances_per_model_instance": config.bls_instances
                    / config.rcnn_instances,
                    "worker_threads": workers})
    return out


def print_per_instance(recommendations: list[dict]) -> list[dict]:
    print("\n== Per mask_rcnn instance (best pipeline_bls throughput, no errors, within "
          "the latency budget if given)")
    for r in recommendations:
        if "config" not in r:
            print(f"  stand-in {r['standin_ms']:g} ms: none: {r['note']}")
            continue
        print(f"  model latency {r['standin_ms']:g} ms: {r['bls_instances_per_model_instance']:g} "
              f"pipeline_bls instance(s) x {r['worker_threads']} worker thread(s) per mask_rcnn "
              f"instance ({r['throughput']:.1f} img/s at concurrency {r['concurrency']}, p99 "
              f"{r['p99_ms']:.0f} ms)")
    print("  apply one to a repository: python -m export tune --repository REPO --model "
          "pipeline_bls --from-sweep build/sweep/sweep.json --model-latency-ms MS")
    return recommendations


# --------------------------------------------------------------------------- analysis
def recommend(points: list[Point], budget_ms: float | None) -> tuple[Point | None, str]:
    """Best pipeline_bls throughput with no errors and p99 within the budget."""
    bls = [p for p in points if p.target == "bls" and p.errors == 0 and p.answered]
    if not bls:
        return None, "no pipeline_bls point without errors"
    fits = [p for p in bls if budget_ms is None or p.p99_ms <= budget_ms]
    if not fits:
        best = min(bls, key=lambda p: p.p99_ms)
        return None, (f"no pipeline_bls point has p99 <= {budget_ms:.0f} ms; the lowest p99 "
                      f"is {best.p99_ms:.0f} ms ({best.config}, concurrency {best.concurrency})")
    best = max(fits, key=lambda p: (p.throughput, -p.p99_ms))
    return best, ""


def path_times(point: Point) -> dict[str, float]:
    """Per image, server side: the Python stages, waiting for and running mask_rcnn."""
    b = point.breakdown
    rcnn = b.get(MODEL_NAME, {"queue_ms": 0.0, "compute_ms": 0.0})
    out = {"rcnn_queue": rcnn["queue_ms"], "rcnn_compute": rcnn["compute_ms"]}
    if point.target == "bls":
        bls, stages = b[PIPELINE_NAME], b.get(STAGES_KEY, {})
        # Its own metrics: prepare and finish include waiting for a worker thread; "model"
        # is the BLS call, mask_rcnn's queue and compute plus the IPC both ways. Triton's
        # compute time for pipeline_bls is execute's, which only waits while the instance
        # holds max_in_flight_requests: entry queue.
        out["python"] = stages.get("prepare_ms", 0.0) + stages.get("finish_ms", 0.0)
        out["bls_call"] = stages.get("model_ms", 0.0)
        out["entry_queue"] = bls["queue_ms"] + bls["compute_ms"]
        out["batch"] = bls["batch"]
        out["server"] = out["entry_queue"] + stages.get("total_ms", 0.0)
        return out
    elif point.target == "ensemble":
        pre, post = b[PREPROCESS_NAME], b[POSTPROCESS_NAME]
        out["python"] = pre["compute_ms"] + post["compute_ms"]
        out["entry_queue"] = pre["queue_ms"] + post["queue_ms"]
    out["server"] = sum(out.get(k, 0.0) for k in ("rcnn_queue", "rcnn_compute", "python",
                                                  "entry_queue"))
    return out


def explain(bls: Point, ens: Point, bare: Point | None) -> str:
    """One line on where the difference between pipeline_bls and the ensemble comes from."""
    ratio = bls.throughput / ens.throughput - 1 if ens.throughput else float("nan")
    a, e = path_times(bls), path_times(ens)
    parts = []
    if abs(ratio) < EQUAL_WITHIN:
        parts.append(f"equal within {EQUAL_WITHIN:.0%}")
    else:
        parts.append(f"pipeline_bls {'faster' if ratio > 0 else 'slower'} by {abs(ratio):.0%}")
    share = a["rcnn_compute"] / a["server"] if a["server"] else 0
    parts.append(f"mask_rcnn compute {a['rcnn_compute']:.0f} vs {e['rcnn_compute']:.0f} ms/img "
                 f"({share:.0%} of bls server time)")
    parts.append(f"Python stages {a['python']:.0f} vs {e['python']:.0f} ms/img")
    hop = a.get("bls_call", 0.0) - a["rcnn_queue"] - a["rcnn_compute"]
    if a.get("bls_call"):
        parts.append(f"pipeline_bls's mask_rcnn call adds {hop:.0f} ms/img beyond the model's "
                     f"queue and compute (BLS IPC)")
    if a["rcnn_queue"] > 0.1 * a["server"] or e["rcnn_queue"] > 0.1 * e["server"]:
        parts.append(f"waiting for a mask_rcnn instance {a['rcnn_queue']:.0f} vs "
                     f"{e['rcnn_queue']:.0f} ms")
    parts.append(f"server CPU {bls.server_cpu_ms_per_image:.0f} vs "
                 f"{ens.server_cpu_ms_per_image:.0f} ms/img")
    if bare is not None and bare.throughput:
        parts.append(f"bare model {bare.throughput:.2f} img/s (bls at "
                     f"{bls.throughput / bare.throughput:.0%} of it)")
    return "; ".join(parts)


def fmt(v: float, digits: int = 0) -> str:
    return "-" if v != v else f"{v:.{digits}f}"  # NaN -> "-"


def print_results(points: list[Point], configs: list[SweepConfig], concurrency: list[int],
                  budget_ms: float | None, repository: str) -> dict:
    print("\n== Sweep: closed-loop gRPC (asyncio), per point: throughput = answered / wall "
          "time; latency per request as the client saw it")
    rows = []
    for p in points:
        rows.append([p.config, p.target, p.concurrency, p.answered, p.errors,
                     fmt(p.throughput, 2), fmt(p.p50_ms), fmt(p.p90_ms), fmt(p.p99_ms),
                     fmt(p.server_cpu_ms_per_image), fmt(p.server_cpu_util, 2),
                     fmt(p.loadavg_1m, 2)])
    print(table(["configuration", "target", "conc", "n", "err", "img/s", "p50 ms", "p90 ms",
                 "p99 ms", "srv CPU ms/img", "srv cores", "load"], rows, left=2))

    by_key = {(p.config, p.target, p.concurrency): p for p in points}
    comparison = []
    if any(p.target == "bls" for p in points) and any(p.target == "ensemble" for p in points):
        print("\n== pipeline_bls vs ensemble (infer_pipeline), throughput at every concurrency "
              "(target: pipeline_bls >= ensemble)")
        rows = []
        for config in configs:
            for c in concurrency:
                bls = by_key.get((config.label, "bls", c))
                ens = by_key.get((config.label, "ensemble", c))
                bare = by_key.get((config.label, "bare", c))
                if not bls or not ens:
                    continue
                ratio = bls.throughput / ens.throughput if ens.throughput else float("nan")
                ok = bls.throughput >= ens.throughput
                comparison.append({"config": config.label, "concurrency": c,
                                   "bls": bls.throughput, "ensemble": ens.throughput,
                                   "bare": bare.throughput if bare else None,
                                   "ratio": ratio, "bls_ge_ensemble": ok,
                                   "why": explain(bls, ens, bare)})
                rows.append([config.label, c, fmt(bls.throughput, 2), fmt(ens.throughput, 2),
                             fmt(bare.throughput, 2) if bare else "", f"{ratio - 1:+.1%}",
                             "PASS" if ok else ("~" if abs(ratio - 1) < EQUAL_WITHIN else "MISS")])
        print(table(["configuration", "conc", "bls img/s", "ensemble img/s", "bare img/s",
                     "bls vs ens", ""], rows, left=1))
        print("  (~: MISS within noise, under ±3 %)")
        print("\n  where the time goes, per image, server side, ms. python: ensemble = "
              "preprocess + postprocess compute (Triton statistics);\n  bls = prepare + "
              "finish from pipeline_bls's own metrics (pipeline_request_duration_us), worker-"
              "thread waits included.\n  entry queue: waiting for a pipeline_bls (or a "
              "preprocess/postprocess) instance, the batching delay included.")
        rows = []
        for config in configs:
            for c in concurrency:
                for target in ("bls", "ensemble", "bare"):
                    p = by_key.get((config.label, target, c))
                    if not p:
                        continue
                    t = path_times(p)
                    rows.append([config.label, c, target, fmt(t.get("entry_queue", 0.0)),
                                 fmt(t.get("python", 0.0)), fmt(t["rcnn_queue"]),
                                 fmt(t["rcnn_compute"]), fmt(t["server"]), fmt(p.p50_ms),
                                 fmt(t.get("batch", 0.0), 2) if target == "bls" else ""])
        print(table(["configuration", "conc", "target", "entry queue", "python", "rcnn queue",
                     "rcnn compute", "server sum", "client p50", "bls batch"], rows, left=1))
        print("\n  why, per concurrency (bls vs ensemble):")
        for item in comparison:
            print(f"  - {item['config']}, c={item['concurrency']}: {item['why']}")

    best, reason = recommend(points, budget_ms)
    budget = f"p99 <= {budget_ms:.0f} ms" if budget_ms is not None else "no latency budget given"
    print(f"\n== Recommendation ({budget}, no errors): best pipeline_bls throughput")
    recommendation = None
    if best is None:
        print(f"  none: {reason}")
    else:
        config = next(c for c in configs if c.label == best.config)
        print(f"  {best.config} at concurrency {best.concurrency}: {best.throughput:.2f} img/s, "
              f"p50 {best.p50_ms:.0f} ms, p99 {best.p99_ms:.0f} ms ({best.answered} requests)")
        print("  apply it to a repository:")
        for line in config.tune_commands(repository):
            print(f"    {line}")
        recommendation = {"config": best.config, "spec": best.spec,
                          "concurrency": best.concurrency, "throughput": best.throughput,
                          "p99_ms": best.p99_ms, "tune_commands": config.tune_commands(repository)}
    return {"comparison": comparison, "recommendation": recommendation,
            "recommendation_note": reason}


def write_csv(points: list[Point], path: Path) -> None:
    rows = [p.row() for p in points]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(rows)


def plot(points: list[Point], configs: list[SweepConfig], path: Path, title: str,
         budget_ms: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"bls": ("-", "o"), "ensemble": ("--", "s"), "bare": (":", "^")}
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(13, 5.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, config in enumerate(configs):
        colour = colours[i % len(colours)]
        for target, (line, marker) in styles.items():
            pts = sorted((p for p in points if p.config == config.label and p.target == target),
                         key=lambda p: p.concurrency)
            if not pts:
                continue
            xs = [p.concurrency for p in pts]
            label = f"{target}: {config.label}"
            ax_t.plot(xs, [p.throughput for p in pts], line, marker=marker, color=colour,
                      label=label)
            ax_l.plot(xs, [p.p99_ms for p in pts], line, marker=marker, color=colour,
                      label=label)
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.grid(True, alpha=0.3)
        ticks = sorted({p.concurrency for p in points})
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax_t.set_ylabel("throughput (images/s)")
    ax_t.set_title("throughput")
    ax_l.set_ylabel("p99 latency (ms)")
    ax_l.set_title("p99 latency")
    if budget_ms is not None:
        ax_l.axhline(budget_ms, color="red", alpha=0.5, linewidth=1, label="latency budget")
    ax_t.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path,
                   help="an exported repository (copied, never modified); a new or empty "
                        "folder is exported into and kept. Default: export into a scratch folder")
    p.add_argument("--min-size", type=int, help="export: shortest edge (default 800)")
    p.add_argument("--max-size", type=int, help="export: longest edge at most (default 1333)")
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="image to send (repeatable); requests cycle through all images")
    p.add_argument("--generated", action="append", default=[], metavar="WxH",
                   help="also send a generated JPEG scene of this size (repeatable); default "
                        "640x480 when no --image is given")
    p.add_argument("--config", action="append", default=[], metavar="MxT[:B][,k=v]",
                   help=f"instance configuration (repeatable); default: {' '.join(DEFAULT_CONFIGS)}")
    p.add_argument("--concurrency", type=int_list, default=DEFAULT_CONCURRENCY,
                   help="concurrency levels, e.g. 1,2,4,8 (default)")
    p.add_argument("--targets", default="bls,ensemble,bare",
                   help="which of bls, ensemble, bare (default: all three)")
    p.add_argument("--requests", type=int, default=40,
                   help="requests per point (target x concurrency), at most (default 40)")
    p.add_argument("--max-seconds", type=float, default=300,
                   help="seconds per point, at most: no new request after (default 300)")
    p.add_argument("--warmup", type=int, default=2,
                   help="warm-up requests per image and instance, per target (default 2: "
                        "after 1, the first point measured still ran ~5 %% slow)")
    p.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT_S,
                   help="client timeout per request, seconds")
    p.add_argument("--latency-budget-ms", type=float,
                   help="p99 the recommended configuration must stay within")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "sweep",
                   help="folder for sweep.csv, sweep.json, sweep.png, server logs "
                        "(default build/sweep)")
    p.add_argument("--no-plot", action="store_true", help="skip sweep.png")
    p.add_argument("--stand-in", type=float_list, metavar="MS[,MS...]",
                   help="serve benchmarks/standin.py as mask_rcnn, answering after each of "
                        "these latencies (ms; e.g. 0,5,10,25), instead of a real model; adds "
                        "the in-process compute, each pipeline's efficiency against it and a "
                        "recommendation per latency")
    p.add_argument("--stand-in-detections", type=int, default=20,
                   help="detections per stand-in answer (default 20)")
    p.add_argument("--stand-in-mask-resolution", type=int, default=28,
                   help="M of the stand-in's [N,1,M,M] masks (default 28); 0: no masks")
    p.add_argument("--compute-repeats", type=int, default=20,
                   help="repetitions of the in-process compute per image (default 20)")
    args = p.parse_args(argv)
    defaults = STANDIN_CONFIGS if args.stand_in else DEFAULT_CONFIGS
    try:
        args.configs = [parse_config(c) for c in (args.config or defaults)]
    except ValueError as e:
        p.error(f"--config: {e}")
    if args.stand_in:
        if args.repository is not None:
            p.error("--stand-in builds its own repository; leave --repository out")
        if args.stand_in_detections < 0 or args.stand_in_mask_resolution < 0:
            p.error("--stand-in-detections and --stand-in-mask-resolution must be >= 0")
        args.configs = [replace(c, standin_ms=ms) for ms in args.stand_in for c in args.configs]
    labels = [c.label for c in args.configs]
    if len(set(labels)) != len(labels):
        p.error(f"--config: the same configuration twice ({labels})")
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_names) - set(TARGETS)
    if unknown or not args.target_names:
        p.error(f"--targets: unknown {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    if args.requests < 1 or args.max_seconds <= 0 or args.warmup < 0:
        p.error("need --requests >= 1, --max-seconds > 0, --warmup >= 0")
    check_images(p, args.image)
    for size in args.generated:
        if not re.fullmatch(r"\d+x\d+", size.lower()) or min(map(int, size.lower().split("x"))) < 1:
            p.error(f"--generated {size}: expected WxH, e.g. 640x480")
    return args


def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from server.launcher import ServerFailed, TritonServer
    from export.torchscript import read_metadata

    command, machine = begin("benchmarks.sweep", argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = load_images(args.image) if args.image else []
    images += generated_images(args.generated or ([] if args.image else ["640x480"]))
    scratch = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    points: list[Point] = []
    failures: dict[str, str] = {}
    try:
        if args.stand_in:
            from benchmarks import standin

            resolution = args.stand_in_mask_resolution or None
            source_path = standin.make_repository(
                scratch / "standin", args.stand_in_detections, resolution,
                args.min_size or 800, args.max_size or 1333)
            meta = standin.metadata(resolution, args.min_size or 800, args.max_size or 1333)
            print(f"model: stand-in (benchmarks/standin.py), {args.stand_in_detections} "
                  f"detections, masks {resolution or 'none'}, latency "
                  f"{', '.join(f'{ms:g}' for ms in args.stand_in)} ms", flush=True)
            measure = InProcessCompute(images, meta, args.stand_in_detections,
                                       args.compute_repeats)
            compute = measure()
        else:
            source = prepare_repository(args, scratch)
            source_path, compute, measure = source.path, None, None
            meta = read_metadata(model_file(source.path))
            for note in source.notes:
                print(f"note: {note}")
        print(f"model: {meta.source}, resize shortest edge {meta.min_size}, longest <= "
              f"{meta.max_size}; repository {source_path}")
        print(f"images: {', '.join(i.name for i in images)}")
        print(f"configurations: {'; '.join(c.label for c in args.configs)}; concurrency "
              f"{','.join(map(str, args.concurrency))}; targets {','.join(args.target_names)}; "
              f"{args.requests} requests or {args.max_seconds:.0f} s per point", flush=True)
        for index, config in enumerate(args.configs):
            repo = scratch / f"repository-{index}"
            shutil.copytree(source_path, repo, copy_function=link_or_copy,
                            ignore=shutil.ignore_patterns("__pycache__"))
            if config.standin_ms is not None:
                standin.configure(repo, config.standin_ms, args.stand_in_detections)
            for model, options in config.tunings():
                # tune replaces each config file (a new inode): the hard-linked source
                # repository is never modified.
                tune(repo, model, options)
            log = args.out / f"triton-{index}.log"
            server = TritonServer(repo, log=log)
            print(f"\n[{index + 1}/{len(args.configs)}] {config.label}: starting tritonserver ...",
                  flush=True)
            started = time.perf_counter()
            try:
                server.start()
                print(f"  ready in {time.perf_counter() - started:.0f} s (log {log})", flush=True)
                import tritonclient.grpc as grpcclient

                with grpcclient.InferenceServerClient(server.grpc_url) as sync:
                    pipe_batch = sync.get_model_config(PIPELINE_NAME).config.max_batch_size > 0
                    ens_batch = sync.get_model_config(ENSEMBLE_NAME).config.max_batch_size > 0
                targets = build_targets(args.target_names, images, meta, pipe_batch, ens_batch)
                points += asyncio.run(measure_config(server, config, targets,
                                                     list(args.concurrency), args, measure))
            except (ServerFailed, RuntimeError) as e:
                failures[config.label] = str(e)[:2000]
                print(f"  FAILED: {str(e)[:2000]}", file=sys.stderr, flush=True)
            finally:
                server.stop()
                shutil.rmtree(repo, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    repository_hint = str(args.repository) if args.repository else "REPO"
    summary = print_results(points, args.configs, list(args.concurrency),
                            args.latency_budget_ms, repository_hint)
    if compute is not None and points:
        summary.update(print_efficiency(points, args.configs, machine["usable_cpus"], compute))
        summary["per_model_instance"] = print_per_instance(
            recommend_per_instance(points, args.configs, args.latency_budget_ms))
    loadavg_end = os.getloadavg()
    print("\nload average at end: " + " ".join(f"{v:.2f}" for v in loadavg_end))
    for label, message in failures.items():
        print(f"FAILED configuration {label}: {message.splitlines()[0]}")
    write_csv(points, args.out / "sweep.csv")
    report = {"command": command, "machine": machine, "loadavg_end": loadavg_end,
              "model": {"min_size": meta.min_size, "max_size": meta.max_size,
                        "source": meta.source, "extra": meta.extra},
              "images": [{"name": i.name, "bytes": len(i.data)} for i in images],
              "configs": [asdict(c) | {"label": c.label} for c in args.configs],
              "concurrency": list(args.concurrency), "requests": args.requests,
              "max_seconds": args.max_seconds, "latency_budget_ms": args.latency_budget_ms,
              "points": [asdict(p) for p in points], "failures": failures, **summary}
    (args.out / "sweep.json").write_text(json.dumps(report, indent=2, default=str))
    written = [args.out / "sweep.csv", args.out / "sweep.json"]
    if not args.no_plot and points:
        title = (f"{meta.source}, input {meta.min_size}/{meta.max_size} px, "
                 f"{machine['usable_cpus']} CPUs ({machine['cpu_model']}), "
                 f"images: {', '.join(i.name for i in images)}; load "
                 f"{machine['loadavg_start'][0]:.1f}->{loadavg_end[0]:.1f}")
        plot(points, args.configs, args.out / "sweep.png", title, args.latency_budget_ms)
        written.append(args.out / "sweep.png")
    print("written: " + ", ".join(str(p) for p in written))
    return 1 if failures or not points else 0


if __name__ == "__main__":
    run_main(main)
