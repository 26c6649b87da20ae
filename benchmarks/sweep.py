"""python -m benchmarks.sweep: throughput and latency of pipeline_bls, the ensemble and the bare
mask_rcnn over concurrency x instance configurations, on real or stand-in (--stand-in) models.
Writes sweep.json (every number) and triton-<i>.log to --out. Reading it: docs/benchmarks.md."""

import asyncio
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio

from benchmarks import harness as h
from bls.backend.metrics import (CPU_METRIC, CPU_STAGES, DURATION_METRIC, OUTCOMES,
                                 REQUESTS_METRIC, STAGES)
from bls.backend.process import keep_freed_memory
from bls.contract.parameters import PIPELINE_PARAMETERS, RequestOptions
from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, PIPELINE_NAME,
                                  POSTPROCESS_NAME, PREPROCESS_NAME)
from bls.pipeline.steps import finish, prepare
from client import statistics
from client.metrics import scrape, scrape_until, value
from export import standin
from export.tune import TuneOptions, describe, tune
from server.launcher import ServerFailed

DEFAULT_CONFIGS = ("1x2", "2x1", "1x2:2", "2x1:2")
# The first is the repository as shipped: 2 pipeline_bls instances, the ensemble's steps 1.
STANDIN_CONFIGS = ("1x1:2,stages=1", "1x1:1", "1x1:2,workers=1,stages=1", "1x1:4,stages=1")
TARGETS = {"bls": PIPELINE_NAME, "ensemble": ENSEMBLE_NAME, "bare": MODEL_NAME}
PATHS = {"bls": (PIPELINE_NAME, MODEL_NAME), "bare": (MODEL_NAME,),
         "ensemble": (PREPROCESS_NAME, MODEL_NAME, POSTPROCESS_NAME)}
STAGES_KEY = "pipeline_bls stages"  # Point.breakdown key of stage_means()
# The targets of an instant model (docs/benchmarks.md): pipeline_bls's throughput against
# the ensemble's, by concurrency (at least); paired c=1 latency over the in-process compute
# (at most, ms); its stub's CPU per image over the compute at the top concurrency (at most,
# ms); throughput at the top concurrency against cores x the in-process rate (at least).
VS_ENSEMBLE = {1: 1.05, 4: 1.2, 8: 1.2}
OVER_COMPUTE_MS, STUB_OVER_COMPUTE_MS, EFFICIENCY = 2.5, 1.0, 0.75
SPEC = re.compile(r"(?P<m>[1-9]\d*)x(?P<t>\d+)(?::(?P<b>[1-9]\d*))?(?P<extra>(?:,[a-z]+=\d+)*)")
KEYS = {"workers": "worker_threads", "delay": "delay_us", "batch": "max_batch_size",
        "stages": "stage_instances"}


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
    standin_ms: float | None = None  # mask_rcnn is export/standin.py with this latency

    @property
    def stages(self) -> int:
        return self.bls_instances if self.stage_instances is None else self.stage_instances

    @property
    def label(self) -> str:
        threads = f"{self.rcnn_threads}t" if self.rcnn_threads else "default"
        model = (f"rcnn {self.rcnn_instances}x{threads}" if self.standin_ms is None
                 else f"stand-in {self.standin_ms:g} ms x{self.rcnn_instances}")
        extra = {"stages": self.stages if self.stages != self.bls_instances else None} | {
            key: getattr(self, KEYS[key]) for key in ("workers", "delay", "batch")}
        return ", ".join([model, f"bls {self.bls_instances}"]
                         + [f"{k} {v}" for k, v in extra.items() if v is not None])

    def tunings(self) -> list[tuple[str, TuneOptions]]:
        """What export/tune.py applies to the scratch repository, per model."""
        threads = None if self.standin_ms is not None else self.rcnn_threads
        bls = TuneOptions(instances=self.bls_instances, worker_threads=self.worker_threads,
                          max_queue_delay_us=self.delay_us, max_batch_size=self.max_batch_size)
        return [(MODEL_NAME, TuneOptions(instances=self.rcnn_instances, intra_op_threads=threads)),
                (PIPELINE_NAME, bls), (PREPROCESS_NAME, TuneOptions(instances=self.stages)),
                (POSTPROCESS_NAME, TuneOptions(instances=self.stages))]

    def tune_commands(self, repository: str = "REPO") -> list[str]:
        return [f"python -m export tune --repository {shlex.quote(repository)} --model {model} "
                + " ".join(describe(k, v) for k, v in options.given().items())
                for model, options in self.tunings()]


def parse_config(text: str) -> SweepConfig:
    """``MxT[:B][,key=value...]`` -> SweepConfig; ValueError naming what is wrong."""
    spec = text.strip().replace(" ", "")
    match = SPEC.fullmatch(spec)
    if not match:
        raise ValueError(f"configuration {text!r}: expected MxT[:B][,key=value...], e.g. '2x1:2'")
    values = {"rcnn_instances": int(match["m"]), "rcnn_threads": int(match["t"]),
              "bls_instances": int(match["b"] or 1)}
    for key, _, number in (item.partition("=") for item in match["extra"].split(",") if item):
        if key not in KEYS:
            raise ValueError(f"configuration {text!r}: unknown key {key!r} ({', '.join(KEYS)})")
        values[KEYS[key]] = int(number)
    return SweepConfig(spec, **values)


@dataclass
class Point:
    """One (configuration, target, concurrency): throughput = answered images / wall s;
    server_cpu_util = server CPU s / wall s (1.0: one core); compute_ms: the in-process
    compute measured just before (stand-in); breakdown: statistics.delta by model, stage_means."""
    config: str
    spec: str
    target: str
    model: str
    concurrency: int
    answered: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    server_cpu_ms_per_image: float
    server_cpu_util: float
    loadavg_1m: float
    compute_ms: float = float("nan")
    latencies_ms: list = field(default_factory=list)
    paired_c1: dict = field(default_factory=dict)
    cpu_ms_per_image: dict = field(default_factory=dict)  # by server process, and "client"
    breakdown: dict = field(default_factory=dict)
    error_messages: dict = field(default_factory=dict)


def cpu_seconds(server) -> Counter:
    """CPU seconds of the server's live processes, summed by model (its stubs) or name."""
    return sum((Counter({p["name"].removeprefix("stub:"): p["cpu_s"]})
                for p in server.processes()), Counter())


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """pipeline_bls's own metrics between two scrapes: mean ms per request of each stage,
    wall and (``<stage>_cpu_ms``) its thread's CPU."""
    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    n = sum(delta(REQUESTS_METRIC, outcome=o) for o in OUTCOMES)
    return {"requests": n} | {f"{s}_ms": delta(DURATION_METRIC, stage=s) / n / 1000 if n else 0.0
                              for s in STAGES} | {
        f"{s}_cpu_ms": delta(CPU_METRIC, stage=s) / n / 1000 if n else 0.0 for s in CPU_STAGES}


def sender(client, target):
    """send(k, worker) for h.closed_loop: target's k-th input (cycling) to its model."""
    model, inputs = TARGETS[target.name], target.inputs
    return lambda k, worker: client.infer(model, inputs[k % len(inputs)],
                                          client_timeout=h.REQUEST_TIMEOUT_S)


async def measure_point(server, client, config, target, c: int, args, first: int) -> Point:
    """One closed loop, with Triton's statistics, pipeline_bls's metrics and the CPU around it."""
    model, load = TARGETS[target.name], os.getloadavg()[0]
    stats0 = statistics.per_model(await client.get_inference_statistics(as_json=True))
    scraped = await asyncio.to_thread(scrape, server.metrics_url) if target.name == "bls" else None
    cpu0, client0 = cpu_seconds(server), time.process_time()
    run = await h.closed_loop(sender(client, target), c, args.requests, args.max_seconds, first)
    cpu1, client_cpu = cpu_seconds(server), time.process_time() - client0
    expected = run["issued"] + statistics.handled(stats0.get(model, Counter()))
    for _ in range(500):  # Triton counts a request when released, just after its answer
        stats1 = statistics.per_model(await client.get_inference_statistics(as_json=True))
        if statistics.handled(stats1.get(model, Counter())) >= expected:
            break
        await asyncio.sleep(0.01)
    breakdown = statistics.delta(stats0, stats1, PATHS[target.name])
    if scraped is not None:  # pipeline_bls flushes its counts every 250 ms
        after = await asyncio.to_thread(scrape_until, server.metrics_url, lambda now: stage_means(
            scraped, now)["requests"] >= run["issued"])
        breakdown[STAGES_KEY] = stage_means(scraped, after)
    s, n, secs = h.summary(run["latencies"]), len(run["latencies"]), max(run["seconds"], 1e-9)
    server_cpu = cpu1.total() - cpu0.total()
    cpu = {k: round((v - cpu0.get(k, 0.0)) * 1000 / max(n, 1), 3) for k, v in cpu1.items()}
    cpu["client"] = round(client_cpu * 1000 / max(n, 1), 3)
    return Point(config.label, config.spec, target.name, model, c, n, sum(run["errors"].values()),
                 round(secs, 3), n / secs, s["p50_ms"], s["p90_ms"], s["p99_ms"], s["mean_ms"],
                 s["max_ms"], server_cpu * 1000 / n if n else float("nan"), server_cpu / secs,
                 load, latencies_ms=[round(v * 1000, 2) for v in run["latencies"]],
                 cpu_ms_per_image=cpu, breakdown=breakdown, error_messages=run["errors"])


async def measure_config(server, config: SweepConfig, targets: list, args, compute=None) -> list:
    """Warm-up (every image on every instance), then per concurrency and target one closed
    loop; ``compute`` (InProcessCompute) measured before each concurrency level, server idle."""
    client, points = grpc_aio.InferenceServerClient(server.grpc_url), []
    try:
        width = max(config.rcnn_instances, config.bls_instances, config.stages)
        for t in targets:
            warm = await h.closed_loop(sender(client, t), width,
                                       args.warmup * len(t.inputs) * width, args.max_seconds * 2)
            if warm["errors"]:
                raise RuntimeError(f"warm-up of {t.name} failed: {warm['errors']}")
        for i, c in enumerate(args.concurrency):
            compute_ms = compute()["mean_ms"] if compute is not None else float("nan")
            for t in h.rotated(targets, i):
                p = await measure_point(server, client, config, t, c, args, first=i)
                p.compute_ms = compute_ms
                if compute is not None and c == 1 and t.name != "bare":
                    p.paired_c1 = await compute.paired(sender(client, t), min(args.requests, 100))
                points.append(p)
                print(f"  {config.label} | {t.name} c={c}: {p.throughput:.2f} img/s, "
                      f"{p.errors} errors", file=sys.stderr, flush=True)
    finally:
        await client.close()
    return points


class InProcessCompute:
    """pipeline_bls's own work per image here, one thread: prepare and finish around the
    stand-in's outputs. Called: medians of ``repeats`` per image, ms, and "rate" (img/s)."""

    def __init__(self, images: list, meta, detections: int, repeats: int):
        cv2.setNumThreads(1)
        keep_freed_memory()  # as the served models do
        self.images, self.meta, self.repeats, self.detections = images, meta, repeats, detections

    def one(self, k: int) -> tuple[float, float]:
        """(prepare ms, finish ms) of image k (cycling), once."""
        t_prepare, prepared = h.timed(prepare, self.images[k % len(self.images)].data, self.meta)
        outputs = standin.standin_outputs(tuple(s.name for s in self.meta.outputs),
                                          self.detections, self.meta.mask_resolution,
                                          *prepared.model_input.shape[1:])
        t_finish, _ = h.timed(finish, outputs, prepared.original_size, self.meta,
                              RequestOptions(self.meta.score_threshold))
        return t_prepare * 1000, t_finish * 1000

    def __call__(self) -> dict:
        per_image = {}
        for k, image in enumerate(self.images):
            runs = np.array([self.one(k) for _ in range(self.repeats + 1)][1:])
            prepare_ms, finish_ms = np.median(runs, axis=0)
            per_image[image.name] = {"prepare_ms": prepare_ms, "finish_ms": finish_ms,
                                     "total_ms": float(np.median(runs.sum(axis=1)))}
        mean_ms = float(np.mean([r["total_ms"] for r in per_image.values()]))
        return {"per_image": per_image, "mean_ms": mean_ms, "rate": 1000 / mean_ms,
                "repeats": self.repeats}

    async def paired(self, send, pairs: int) -> dict:
        """Concurrency 1, paired: per iteration this compute, then the served request; medians
        of served, compute and their difference (the machine's drift hits both alike)."""
        rows = []
        for k in range(pairs):
            work = sum(self.one(k))
            start = time.perf_counter()
            await send(k, 0)
            rows.append(((time.perf_counter() - start) * 1000, work))
        served, work = np.array(rows).T
        return {"pairs": pairs, "served_ms": float(np.median(served)),
                "compute_ms": float(np.median(work)), "over_ms": float(np.median(served - work))}


def ideal_throughput(config: SweepConfig, concurrency: int, cores: int, rate: float) -> float:
    """min(concurrency, cores) x the in-process rate, at most stand-in instances / latency."""
    bound = config.rcnn_instances * 1000 / config.standin_ms if config.standin_ms else np.inf
    return min(min(concurrency, cores) * rate, bound)


def print_efficiency(points: list, configs: list, cores: int, compute: dict) -> dict:
    print(f"\n== In process, one thread: prepare + finish per image, median of "
          f"{compute['repeats']}, ms")
    print(h.table(["image", "prepare", "finish", "sum"], [
        [name, *(h.fmt(r[k], 1) for k in ("prepare_ms", "finish_ms", "total_ms"))]
        for name, r in compute["per_image"].items()]))
    print(f"  mean {compute['mean_ms']:.1f} ms/img: {compute['rate']:.1f} img/s on one core")
    print("\n== Efficiency: throughput / ideal; over: latency - compute - stand-in latency "
          "(docs/benchmarks.md)")
    rows, report, top = [], [], max(p.concurrency for p in points)
    for p in (p for p in points if p.target != "bare"):
        config, compute_ms = next(c for c in configs if c.label == p.config), p.compute_ms
        ideal = ideal_throughput(config, p.concurrency, cores, 1000 / compute_ms)
        over = p.paired_c1["over_ms"] if p.paired_c1 else p.mean_ms - compute_ms
        over -= config.standin_ms or 0
        item = {"config": p.config, "target": p.target, "concurrency": p.concurrency,
                "throughput": p.throughput, "ideal": ideal, "compute_ms": compute_ms,
                "efficiency": p.throughput / ideal, "over_compute_ms": over}
        verdicts, instant = [], p.target == "bls" and config.standin_ms == 0
        if instant and p.concurrency == 1:
            item["latency_target_met"] = over <= OVER_COMPUTE_MS
            verdicts.append(f"c1 latency <= compute + {OVER_COMPUTE_MS:g} ms: "
                            f"{h.verdict(over <= OVER_COMPUTE_MS)}")
        if instant and p.concurrency == top >= cores:
            stub_over = p.cpu_ms_per_image.get(PIPELINE_NAME, float("nan")) - compute_ms
            item["stub_over_compute_ms"] = stub_over
            item["stub_cpu_target_met"] = stub_over <= STUB_OVER_COMPUTE_MS
            item["throughput_target_met"] = item["efficiency"] >= EFFICIENCY
            verdicts.append(f"c{top} >= {EFFICIENCY:.0%} of cores x rate: "
                            f"{h.verdict(item['efficiency'] >= EFFICIENCY)}")
            verdicts.append(f"stub CPU {stub_over:+.1f} ms <= compute + "
                            f"{STUB_OVER_COMPUTE_MS:g}: {h.verdict(stub_over <= STUB_OVER_COMPUTE_MS)}")
            stages = p.breakdown.get(STAGES_KEY, {})
            in_stub = sum(stages.get(f"{s}_cpu_ms", 0.0) for s in CPU_STAGES)
            item["stub_compute_ms"] = in_stub  # prepare + finish, the stub's thread CPU
            item["stub_serving_ms"] = p.cpu_ms_per_image.get(PIPELINE_NAME, 0.0) - in_stub
        report.append(item)
        rows.append([p.config, p.target, p.concurrency, h.fmt(p.throughput, 1),
                     h.fmt(compute_ms, 1), h.fmt(ideal, 1), f"{item['efficiency']:.0%}",
                     f"{over:+.1f}", "; ".join(verdicts)])
    print(h.table(["configuration", "target", "conc", "img/s", "compute ms", "ideal",
                   "efficiency", "over", "targets (instant model)"], rows, left=2))
    print(f"\n  CPU ms per image by process at concurrency {top} (share of the cores' time):")
    for p in (q for q in points if q.concurrency == top and q.target != "bare"):
        cpu = sorted(p.cpu_ms_per_image.items(), key=lambda kv: -kv[1])
        share = p.throughput / 1000 / cores  # ms of CPU per image -> share of all cores
        print(f"  - {p.config}, {p.target}: "
              + ", ".join(f"{k} {v:.1f} ({v * share:.0%})" for k, v in cpu if v >= 0.05)
              + f"; cores busy {sum(cpu_ms for _, cpu_ms in cpu) * share:.0%}")
    for item in (r for r in report if "stub_compute_ms" in r):
        print(f"  - {item['config']}, pipeline_bls's stub: prepare + finish on its threads "
              f"{item['stub_compute_ms']:.1f} ms per image (in process, alone: "
              f"{item['compute_ms']:.1f}), the rest (reading, the model call, the send, "
              f"threads) {item['stub_serving_ms']:.1f}")
    return {"in_process": compute, "efficiency": report}


def recommend_per_instance(points: list, configs: list, budget_ms) -> list[dict]:
    """Per stand-in latency: pipeline_bls instances and worker_threads per mask_rcnn instance."""
    out = []
    for latency in dict.fromkeys(c.standin_ms for c in configs):
        labels = {c.label: c for c in configs if c.standin_ms == latency}
        best, reason = recommend([p for p in points if p.config in labels], budget_ms)
        c = labels.get(getattr(best, "config", None))
        out.append({"standin_ms": latency, "note": reason} if c is None else {
            "standin_ms": latency, "config": c.label, "throughput": best.throughput,
            "p99_ms": best.p99_ms, "concurrency": best.concurrency,
            "worker_threads": c.worker_threads or PIPELINE_PARAMETERS.read({})["worker_threads"],
            "bls_instances_per_model_instance": c.bls_instances / c.rcnn_instances})
    print("\n== Per mask_rcnn instance (best pipeline_bls throughput, no errors, within budget; "
          "applied by export tune --from-sweep)")
    columns = {"bls_instances_per_model_instance": 2, "worker_threads": 0, "throughput": 1,
               "concurrency": 0}
    print(h.table(["model latency ms", "bls instances", "worker threads", "img/s", "conc", ""], [
        [f"{r['standin_ms']:g}", *(h.fmt(r.get(k), d) for k, d in columns.items()),
         r.get("note", "")] for r in out]))
    return out


def recommend(points: list, budget_ms: float | None) -> tuple[Point | None, str]:
    """Best pipeline_bls throughput with no errors and p99 within the budget."""
    bls = [p for p in points if p.target == "bls" and p.errors == 0 and p.answered]
    if not bls:
        return None, "no pipeline_bls point without errors"
    fits = [p for p in bls if budget_ms is None or p.p99_ms <= budget_ms]
    if not fits:
        best = min(bls, key=lambda p: p.p99_ms)
        return None, (f"no pipeline_bls point has p99 <= {budget_ms:.0f} ms; the lowest p99 is "
                      f"{best.p99_ms:.0f} ms ({best.config}, concurrency {best.concurrency})")
    return max(fits, key=lambda p: (p.throughput, -p.p99_ms)), ""


def path_times(point: Point) -> list[float]:
    """Per image, server side, ms: entry queue, Python, mask_rcnn queue and compute, and the
    time in the server. pipeline_bls's Python work comes from its own metrics (Triton's
    statistics do not split its execute); its execute returns with its batch's answers, so
    Triton's queue + compute for it is the whole time in the server, the wait for the
    slowest request of its batch included."""
    b = point.breakdown
    rcnn = b.get(MODEL_NAME, {"queue_ms": 0.0, "compute_ms": 0.0})
    entry = python = 0.0
    if point.target == "bls":
        stages, bls = b[STAGES_KEY], b[PIPELINE_NAME]
        python = stages["prepare_ms"] + stages["finish_ms"]
        return [bls["queue_ms"], python, rcnn["queue_ms"], rcnn["compute_ms"],
                bls["queue_ms"] + bls["compute_ms"]]
    if point.target == "ensemble":
        pre, post = b[PREPROCESS_NAME], b[POSTPROCESS_NAME]
        entry, python = pre["queue_ms"] + post["queue_ms"], pre["compute_ms"] + post["compute_ms"]
    times = [entry, python, rcnn["queue_ms"], rcnn["compute_ms"]]
    return times + [sum(times)]


def print_results(points: list, configs: list, args) -> dict:
    by_key = {(p.config, p.target, p.concurrency): p for p in points}
    ordered = [by_key[k] for c in configs for n in args.concurrency for t in TARGETS
               if (k := (c.label, t, n)) in by_key]

    def versus(p: Point) -> str:
        ens = by_key.get((p.config, "ensemble", p.concurrency))
        if p.target != "bls" or not ens or not ens.throughput:
            return ""
        ratio = p.throughput / ens.throughput
        goal = next((VS_ENSEMBLE[c] for c in sorted(VS_ENSEMBLE, reverse=True)
                     if p.concurrency >= c), 1.0)
        return (f"{ratio:.2f}x " + ("PASS" if ratio >= goal else "~" if ratio > goal - 0.03
                                    else "MISS") + f" (>= {goal:g}x)")

    print("\n== Sweep: closed-loop gRPC (asyncio); throughput = answered / wall time; vs ensemble "
          "(infer_pipeline): pipeline_bls / ensemble against its target, ~: a miss within 0.03x")
    print(h.table(["configuration", "target", "conc", "n", "err", "img/s", "p50 ms", "p90 ms",
                   "p99 ms", "srv CPU ms/img", "srv cores", "load", "vs ensemble"], [
        [p.config, p.target, p.concurrency, p.answered, p.errors, h.fmt(p.throughput, 2),
         h.fmt(p.p50_ms), h.fmt(p.p90_ms), h.fmt(p.p99_ms), h.fmt(p.server_cpu_ms_per_image),
         h.fmt(p.server_cpu_util, 2), h.fmt(p.loadavg_1m, 2), versus(p)] for p in ordered], left=2))
    print("\n  where the time goes, per image, server side, ms (docs/benchmarks.md)")
    print(h.table(["configuration", "conc", "target", "entry queue", "python", "rcnn queue",
                   "rcnn compute", "server sum", "client p50", "bls batch"], [
        [p.config, p.concurrency, p.target, *map(h.fmt, path_times(p)), h.fmt(p.p50_ms),
         h.fmt(p.breakdown[PIPELINE_NAME]["batch"], 2) if p.target == "bls" else ""]
        for p in ordered]))
    best, reason = recommend(points, args.latency_budget_ms)
    print(f"\n== Recommendation (p99 <= {h.fmt(args.latency_budget_ms)} ms, no errors): best "
          f"pipeline_bls throughput")
    if best is None:
        print(f"  none: {reason}")
        return {"recommendation": None, "recommendation_note": reason}
    config = next(c for c in configs if c.label == best.config)
    commands = config.tune_commands(str(args.repository or "REPO"))
    print(f"  {best.config} at concurrency {best.concurrency}: {best.throughput:.2f} img/s, "
          f"p50 {best.p50_ms:.0f} ms, p99 {best.p99_ms:.0f} ms\n  apply it to a repository:\n"
          + "\n".join(f"    {line}" for line in commands))
    return {"recommendation_note": reason, "recommendation": {
        "config": best.config, "spec": best.spec, "concurrency": best.concurrency,
        "throughput": best.throughput, "p99_ms": best.p99_ms, "tune_commands": commands}}


def parse_args(argv):
    p = h.parser("benchmarks.sweep", __doc__, "repository", "size", "image", "generated")
    add = p.add_argument
    add("--config", type=parse_config, action="append", default=[], metavar="MxT[:B][,k=v]",
        help=f"instance configuration (repeatable; default {' '.join(DEFAULT_CONFIGS)})")
    add("--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    add("--targets", type=lambda s: s.split(","), default=list(TARGETS), help="bls,ensemble,bare")
    add("--requests", type=int, default=40, help="requests per point at most (default 40)")
    add("--max-seconds", type=float, default=300, help="seconds per point at most (300)")
    add("--warmup", type=int, default=2, help="warm-up requests per image and instance (2)")
    add("--latency-budget-ms", type=float, help="p99 the recommendation must stay within")
    add("--out", type=Path, default=h.ROOT / "build" / "sweep", help="output folder")
    add("--stand-in", type=lambda s: [float(v) for v in s.split(",")], metavar="MS[,MS...]",
        help="stand-in mask_rcnn latencies")
    add("--stand-in-detections", type=int, default=20, help="detections per stand-in answer")
    add("--stand-in-mask-resolution", type=int, default=28, help="M of its masks (0: none)")
    add("--compute-repeats", type=int, default=20, help="repetitions of the in-process compute")
    args = h.parse(p, argv, (lambda a: set(a.targets) - set(TARGETS),
                             f"--targets: choose from {', '.join(TARGETS)}"))
    configs = args.config or [parse_config(c)
                              for c in (STANDIN_CONFIGS if args.stand_in else DEFAULT_CONFIGS)]
    args.configs = [replace(c, standin_ms=ms) for ms in args.stand_in or [None] for c in configs]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = h.images(args.image, args.generated)
    points, failures, summary, measure = [], {}, {}, None
    sizes = (args.min_size or 800, args.max_size or 1333)
    resolution = args.stand_in_mask_resolution
    with h.session("benchmarks.sweep", argv, None if args.stand_in else args) as run:
        if args.stand_in:
            meta = standin.metadata(resolution, *sizes)
            measure = InProcessCompute(images, meta, args.stand_in_detections, args.compute_repeats)
            summary["in_process"] = measure()
        else:
            meta = run.repo.meta
            print("".join(f"note: {note}\n" for note in run.repo.notes), end="")
        bare = [[h.tensor_input(grpcclient, MODEL_INPUT.name, prepare(i.data, meta).model_input)]
                for i in images]
        for index, config in enumerate(args.configs):
            repo = run.scratch / f"repository-{index}"
            if config.standin_ms is None:  # hard links: tune() writes new files
                shutil.copytree(run.repo.path, repo, copy_function=os.link,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                standin.make_repository(repo, config.standin_ms, args.stand_in_detections,
                                        resolution, *sizes)
            for model, options in config.tunings():
                tune(repo, model, options)
            print(f"\n[{index + 1}/{len(args.configs)}] {config.label}:", flush=True)
            try:
                with h.serve(repo, args.out / f"triton-{index}.log") as server:
                    with grpcclient.InferenceServerClient(server.grpc_url) as sync:
                        targets = [SimpleNamespace(name=t, inputs=bare if t == "bare" else [
                            [h.make_input(grpcclient, i.data, h.batched(sync, TARGETS[t]))]
                            for i in images]) for t in args.targets]
                    points += asyncio.run(measure_config(server, config, targets, args, measure))
            except (ServerFailed, RuntimeError) as e:
                failures[config.label] = str(e)[:2000]
                print(f"  FAILED: {str(e)[:2000]}", file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(repo, ignore_errors=True)
    summary |= print_results(points, args.configs, args)
    if measure is not None and points:
        summary |= print_efficiency(points, args.configs, run.machine["usable_cpus"],
                                    summary["in_process"])
        summary["per_model_instance"] = recommend_per_instance(points, args.configs,
                                                               args.latency_budget_ms)
    (args.out / "sweep.json").write_text(json.dumps({
        "command": run.command, "machine": run.machine, "loadavg_end": os.getloadavg(),
        "model": {"min_size": meta.min_size, "max_size": meta.max_size, "source": meta.source},
        "images": [{"name": i.name, "bytes": len(i.data)} for i in images],
        "configs": [asdict(c) | {"label": c.label} for c in args.configs],
        "concurrency": args.concurrency, "requests": args.requests,
        "latency_budget_ms": args.latency_budget_ms, "points": [asdict(p) for p in points],
        "failures": failures, **summary}, indent=2, default=str))
    print(f"written to {args.out}: sweep.json")
    return 1 if failures or not points else 0


if __name__ == "__main__":
    h.run_main(main)
