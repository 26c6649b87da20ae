"""python -m benchmarks.sweep: throughput and latency over concurrency x instance
configurations, for pipeline_bls (bls), the ensemble (ensemble) and the bare mask_rcnn (bare).

  python -m benchmarks.sweep --min-size 320 --concurrency 1,2,4 --config 1x2 --config 2x1 --requests 20
  python -m benchmarks.sweep --repository build/repository --image photo.jpg --latency-budget-ms 8000
  python -m benchmarks.sweep --stand-in 0,5,10,25 --image photo.jpg   # mask_rcnn at GPU speed

Per configuration (MxT[:B][,workers=N,delay=US,batch=N,stages=N]: M mask_rcnn instances of
T torch threads, B pipeline_bls instances) a tuned scratch copy is served; per concurrency
and target a closed loop of gRPC clients. Writes sweep.csv, sweep.json, sweep.png and the
server logs to --out; prints the table, bls vs ensemble with where the time went, and the
recommended configuration (best bls throughput within --latency-budget-ms). With
--stand-in mask_rcnn is benchmarks/standin.py answering after each latency; the printout
adds the in-process compute, efficiency and the per-instance recommendation that
`python -m export tune --from-sweep` applies. Details: docs/benchmarks.md.
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from benchmarks import harness as h
from bls.config import PIPELINE_PARAMETERS
from bls.contract import (ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, PIPELINE_NAME,
                          POSTPROCESS_NAME, PREPROCESS_NAME)
from client.metrics import scrape
from export.tune import TuneOptions, tune

DEFAULT_CONFIGS = ("1x2", "2x1", "1x2:2", "2x1:2")
STANDIN_CONFIGS = ("1x1:1,workers=1", "1x1:1", "1x1:2,workers=1", "1x1:2")
DEFAULT_WORKER_THREADS = PIPELINE_PARAMETERS.read({})["worker_threads"]
TARGETS = {"bls": PIPELINE_NAME, "ensemble": ENSEMBLE_NAME, "bare": MODEL_NAME}
PATHS = {"bls": (PIPELINE_NAME, MODEL_NAME), "bare": (MODEL_NAME,),
         "ensemble": (PREPROCESS_NAME, MODEL_NAME, POSTPROCESS_NAME)}
STAGES_KEY = "pipeline_bls stages"  # Point.breakdown key of stage_means()
EQUAL_WITHIN = 0.03  # |bls / ensemble - 1| below this reads as "equal within noise"
SPEC = re.compile(r"^(?P<m>\d+)x(?P<t>\d+)(?::(?P<b>\d+))?(?P<extra>(?:,[a-z]+=\d+)*)$")
EXTRA_KEYS = {"workers": "worker_threads", "delay": "delay_us", "batch": "max_batch_size",
              "stages": "stage_instances"}
SHORT = {"worker_threads": "workers", "delay_us": "delay", "max_batch_size": "batch"}


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
        threads = "default" if self.rcnn_threads == 0 else f"{self.rcnn_threads}t"
        text = (f"stand-in {self.standin_ms:g} ms x{self.rcnn_instances}" if self.standin_ms is not None
                else f"rcnn {self.rcnn_instances}x{threads}") + f", bls {self.bls_instances}"
        text += f", stages {self.stages}" if self.stages != self.bls_instances else ""
        return text + "".join(f", {short} {getattr(self, k)}" for k, short in SHORT.items()
                              if getattr(self, k) is not None)

    def tunings(self) -> list[tuple[str, TuneOptions]]:
        """What export/tune.py applies to the scratch repository."""
        threads = None if self.standin_ms is not None else self.rcnn_threads
        return [(MODEL_NAME, TuneOptions(instances=self.rcnn_instances, intra_op_threads=threads)),
                (PIPELINE_NAME, TuneOptions(instances=self.bls_instances, worker_threads=self.worker_threads,
                                            max_queue_delay_us=self.delay_us,
                                            max_batch_size=self.max_batch_size)),
                (PREPROCESS_NAME, TuneOptions(instances=self.stages)),
                (POSTPROCESS_NAME, TuneOptions(instances=self.stages))]

    def tune_commands(self, repository: str = "REPO") -> list[str]:
        return [shlex.join(["python", "-m", "export", "tune", "--repository", repository, "--model",
                            model, *(a for k, v in o.given().items()
                                     for a in ("--" + k.replace("_", "-"), str(v)))])
                for model, o in self.tunings()]


def parse_config(text: str) -> SweepConfig:
    """``MxT[:B][,key=value...]`` -> SweepConfig; ValueError naming what is wrong."""
    spec = text.strip().replace(" ", "")
    match = SPEC.match(spec)
    if not match:
        raise ValueError(f"configuration {text!r}: expected MxT[:B][,key=value...], e.g. "
                         f"'1x2', '2x1:2', '1x2:2,workers=2,delay=5000'")
    values = {"rcnn_instances": int(match["m"]), "rcnn_threads": int(match["t"]),
              "bls_instances": int(match["b"] or 1)}
    for key, _, number in (item.partition("=") for item in match["extra"].split(",") if item):
        if key not in EXTRA_KEYS:
            raise ValueError(f"configuration {text!r}: unknown key {key!r} (keys: {', '.join(EXTRA_KEYS)})")
        values[EXTRA_KEYS[key]] = int(number)
    config = SweepConfig(spec, **values)
    if min(config.rcnn_instances, config.bls_instances, config.stages) < 1:
        raise ValueError(f"configuration {text!r}: instance counts must be at least 1")
    return config


def number_list(cast, minimum):
    def parse(text: str) -> tuple:
        try:
            values = tuple(cast(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected numbers >= {minimum}, got {text!r}")
        return values
    return parse


@dataclass
class Target:
    name: str  # bls | ensemble | bare
    model: str
    inputs: list  # one list of InferInput per image


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
    compute_ms: float = float("nan")  # in-process compute just before (stand-in only)
    paired_c1: dict = field(default_factory=dict)  # paired_latency() at concurrency 1
    cpu_ms_per_image: dict = field(default_factory=dict)  # by server process, and "client"
    breakdown: dict = field(default_factory=dict)  # model -> statistics_delta; STAGES_KEY
    error_messages: dict = field(default_factory=dict)
    latencies_ms: list = field(default_factory=list)

    def row(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if not isinstance(v, (dict, list))}
        out |= {f"cpu_{k}_ms": v for k, v in self.cpu_ms_per_image.items()}
        out |= {f"paired_c1_{k}": round(v, 3) for k, v in self.paired_c1.items()}
        for model, v in self.breakdown.items():
            if model == STAGES_KEY:
                out |= {f"bls_{k}": round(x, 2) for k, x in v.items() if k.endswith("_ms")}
                continue
            out |= {f"{model}_{k}": round(v[k], 2) for k in ("queue_ms", "compute_ms")}
            if model == PIPELINE_NAME:
                out[f"{model}_batch"] = round(v["batch"], 2)
        return out


def process_cpu_seconds(pgid: int) -> dict[str, float]:
    """utime + stime of the server's live processes, by model (a stub) or executable."""
    from client.server import live_members

    out: dict[str, float] = {}
    for pid in live_members(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        models = [a for a in argv if a.endswith("/model.py")]
        name = Path(models[0]).parent.parent.name if models else Path(argv[0]).name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


async def measure_config(server, config: SweepConfig, targets: list[Target], args,
                         compute=None) -> list[Point]:
    """Warm-up (every image on every instance), then per concurrency and target a
    closed loop; ``compute`` (InProcessCompute) measured before each concurrency level."""
    import tritonclient.grpc.aio as grpc_aio

    def sender(target: Target):
        return lambda k, w: client.infer(target.model, target.inputs[k % len(target.inputs)],
                                         client_timeout=args.timeout)

    client, points = grpc_aio.InferenceServerClient(server.grpc_url), []
    try:
        width = max(config.rcnn_instances, config.bls_instances, config.stages)
        for target in targets:
            n = args.warmup * len(target.inputs) * width
            if n and (done := await h.closed_loop(sender(target), width, n, args.max_seconds * 2))["errors"]:
                raise RuntimeError(f"warm-up of {target.model} failed: {done['errors']}")
            print(f"  warm-up {target.name}: {n} requests", file=sys.stderr, flush=True)
        for i, c in enumerate(args.concurrency):
            compute_ms = compute()["mean_ms"] if compute is not None else float("nan")
            paired = {t.name: await paired_latency(client, t, compute, min(args.requests, 100), args.timeout)
                      for t in targets if compute is not None and c == 1 and t.name != "bare"}
            for target in h.rotated(targets, i):
                load = os.getloadavg()[0]
                before = h.model_statistics(await client.get_inference_statistics())
                scraped = await asyncio.to_thread(scrape, server.metrics_url) if target.name == "bls" else None
                cpu0, client0 = process_cpu_seconds(server.pid), time.process_time()
                run = await h.closed_loop(sender(target), c, args.requests, args.max_seconds, first=i)
                cpu1, client_cpu = process_cpu_seconds(server.pid), time.process_time() - client0
                after = await h.settled_statistics(client, target.model,
                                                   h.answered(before, target.model) + run["issued"])
                breakdown = h.statistics_delta(before, after, PATHS[target.name])
                if target.name == "bls":
                    breakdown[STAGES_KEY] = h.stage_means(scraped, await asyncio.to_thread(
                        scrape, server.metrics_url))
                s, n, seconds = h.summary(run["latencies"]), len(run["latencies"]), max(run["seconds"], 1e-9)
                server_cpu = sum(cpu1.values()) - sum(cpu0.values())
                cpu = {k: round((v - cpu0.get(k, 0.0)) * 1000 / n, 3) for k, v in cpu1.items()
                       if n and v > cpu0.get(k, 0.0)} | ({"client": round(client_cpu * 1000 / n, 3)} if n else {})
                point = Point(config.label, config.spec, target.name, target.model, c, n,
                              sum(run["errors"].values()), round(seconds, 3), n / seconds,
                              *(s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms")),
                              server_cpu * 1000 / n if n else float("nan"), server_cpu / seconds,
                              client_cpu / seconds, load, compute_ms, paired.get(target.name, {}), cpu,
                              breakdown, run["errors"], [round(v * 1000, 2) for v in run["latencies"]])
                points.append(point)
                print(f"  {config.label} | {target.name:<8} c={c}: {point.throughput:.2f} img/s, "
                      f"p50 {h.fmt(point.p50_ms)} ms, p99 {h.fmt(point.p99_ms)} ms, {n} answered, "
                      f"{point.errors} errors, {seconds:.1f} s, load {load:.2f}", file=sys.stderr, flush=True)
    finally:
        await client.close()
    return points


class InProcessCompute:
    """pipeline_bls's own work per image in this process, one thread: prepare and finish
    around the stand-in's outputs. Called: medians of ``repeats`` per image (ms) and
    "rate", images/s on one core."""

    def __init__(self, images: list[h.Image], meta, detections: int, repeats: int):
        import cv2

        from benchmarks.standin import StandIn
        from bls.memory import keep_freed_memory
        from bls.request import RequestOptions

        cv2.setNumThreads(1)
        keep_freed_memory()  # as the served models do
        self.images, self.meta, self.repeats = images, meta, repeats
        self.standin = StandIn([s.name for s in meta.outputs], detections, meta.mask_resolution,
                               len(meta.class_names))
        self.options = RequestOptions(meta.score_threshold)

    def one(self, k: int) -> tuple[float, float]:
        """(prepare ms, finish ms) of image k (cycling), once."""
        from bls.pipeline import finish, prepare

        t_prepare, prepared = h.timed(prepare, self.images[k % len(self.images)].data, self.meta)
        outputs = self.standin(*prepared.model_input.shape[1:])
        t_finish, _ = h.timed(finish, outputs, prepared.original_size, self.meta, self.options)
        return t_prepare * 1000, t_finish * 1000

    def __call__(self) -> dict:
        per_image = {}
        for k, image in enumerate(self.images):
            self.one(k)
            runs = np.array([self.one(k) for _ in range(self.repeats)])
            per_image[image.name] = {"prepare_ms": float(np.median(runs[:, 0])),
                                     "finish_ms": float(np.median(runs[:, 1])),
                                     "total_ms": float(np.median(runs.sum(axis=1)))}
        mean_ms = float(np.mean([r["total_ms"] for r in per_image.values()]))
        return {"per_image": per_image, "mean_ms": mean_ms, "rate": 1000 / mean_ms,
                "repeats": self.repeats}


async def paired_latency(client, target: Target, compute: InProcessCompute, n: int,
                         timeout: float) -> dict:
    """Concurrency 1, paired: per iteration the in-process compute, then the served
    request; medians of served, compute and their difference (drift hits both alike)."""
    rows = []
    for k in range(n):
        prepare_ms, finish_ms = compute.one(k)
        sent = time.perf_counter()
        await client.infer(target.model, target.inputs[k % len(target.inputs)], client_timeout=timeout)
        rows.append(((time.perf_counter() - sent) * 1000, prepare_ms + finish_ms))
    served, work = np.array(rows).T
    return {"pairs": n, "served_ms": float(np.median(served)), "compute_ms": float(np.median(work)),
            "over_ms": float(np.median(served - work))}


def ideal_throughput(config: SweepConfig, concurrency: int, cores: int, rate: float) -> float:
    """min(concurrency, cores) x the in-process rate, at most stand-in instances / latency."""
    ideal = min(concurrency, cores) * rate
    return min(ideal, config.rcnn_instances * 1000 / config.standin_ms) if config.standin_ms else ideal


def print_efficiency(points: list[Point], configs: list[SweepConfig], cores: int, compute: dict) -> dict:
    print(f"\n== In process, one thread: prepare + finish per image, median of {compute['repeats']}, ms")
    print(h.table(["image", "prepare", "finish", "sum"], [
        [name, *(h.fmt(r[k], 1) for k in ("prepare_ms", "finish_ms", "total_ms"))]
        for name, r in compute["per_image"].items()]))
    print(f"  mean {compute['mean_ms']:.1f} ms/img: {compute['rate']:.1f} img/s on one core, "
          f"{cores * compute['rate']:.1f} img/s on {cores} cores (before the servers; each "
          f"point below uses the compute measured just before it)")
    print("\n== Efficiency: throughput / ideal, ideal = min(concurrency, cores) x in-process "
          "rate (and at most stand-in instances / latency); over = mean latency - (in-process "
          "compute + stand-in latency);\n   at concurrency 1 over is paired: the median of "
          "(served latency - in-process compute) over iterations that run one after the other")
    rows, report, top = [], [], max(p.concurrency for p in points)
    for config in configs:
        for p in (q for q in points if q.config == config.label):
            compute_ms = p.compute_ms if p.compute_ms == p.compute_ms else compute["mean_ms"]
            ideal = ideal_throughput(config, p.concurrency, cores, 1000 / compute_ms)
            over = (p.paired_c1["over_ms"] if p.paired_c1 else p.mean_ms - compute_ms) - (config.standin_ms or 0)
            item = {"config": config.label, "target": p.target, "concurrency": p.concurrency,
                    "throughput": p.throughput, "ideal": ideal, "compute_ms": compute_ms,
                    "efficiency": p.throughput / ideal, "over_compute_ms": over}
            verdicts = []
            if p.target == "bls" and config.standin_ms == 0 and p.concurrency == 1:
                item["latency_target_met"] = over <= 5.0
                verdicts.append(f"c1 latency <= compute + 5 ms: {h.verdict(over <= 5.0)}")
            if p.target == "bls" and config.standin_ms == 0 and p.concurrency == top >= cores:
                item["throughput_target_met"] = item["efficiency"] >= 0.85
                verdicts.append(f"c{top} >= 85 % of cores x rate: {h.verdict(item['efficiency'] >= 0.85)}")
            report.append(item)
            if p.target != "bare":
                rows.append([config.label, p.target, p.concurrency, h.fmt(p.throughput, 1),
                             h.fmt(compute_ms, 1), h.fmt(ideal, 1), f"{item['efficiency']:.0%}",
                             h.fmt(p.mean_ms, 1), f"{over:+.1f}", "; ".join(verdicts)])
    print(h.table(["configuration", "target", "conc", "img/s", "compute ms", "ideal", "efficiency",
                   "mean ms", "over", "targets (instant model)"], rows, left=2))
    print(f"\n  where the CPU goes at concurrency {top}, ms per image by process (the "
          f"in-process compute beside it):")
    for p in (q for q in points if q.concurrency == top and q.target != "bare"):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(p.cpu_ms_per_image.items(),
                                                            key=lambda kv: -kv[1]) if v >= 0.05)
        print(f"  - {p.config}, {p.target}: {parts}; compute {p.compute_ms:.1f}")
    return {"in_process": compute, "efficiency": report}


def recommend_per_instance(points: list[Point], configs: list[SweepConfig], budget_ms) -> list[dict]:
    """Per stand-in latency: pipeline_bls instances and worker_threads per mask_rcnn
    instance, from its best configuration (recommend())."""
    out = []
    for latency in dict.fromkeys(c.standin_ms for c in configs):
        labels = {c.label: c for c in configs if c.standin_ms == latency}
        best, reason = recommend([p for p in points if p.config in labels], budget_ms)
        if best is None:
            out.append({"standin_ms": latency, "note": reason})
            continue
        c = labels[best.config]
        out.append({"standin_ms": latency, "config": c.label, "throughput": best.throughput,
                    "p99_ms": best.p99_ms, "concurrency": best.concurrency,
                    "bls_instances_per_model_instance": c.bls_instances / c.rcnn_instances,
                    "worker_threads": c.worker_threads or DEFAULT_WORKER_THREADS})
    print("\n== Per mask_rcnn instance (best pipeline_bls throughput, no errors, within "
          "the latency budget if given)")
    for r in out:
        print(f"  stand-in {r['standin_ms']:g} ms: none: {r['note']}" if "config" not in r else
              f"  model latency {r['standin_ms']:g} ms: {r['bls_instances_per_model_instance']:g} "
              f"pipeline_bls instance(s) x {r['worker_threads']} worker thread(s) per mask_rcnn "
              f"instance ({r['throughput']:.1f} img/s at concurrency {r['concurrency']}, p99 "
              f"{r['p99_ms']:.0f} ms)")
    print("  apply one to a repository: python -m export tune --repository REPO --model "
          "pipeline_bls --from-sweep build/sweep/sweep.json --model-latency-ms MS")
    return out


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
    return max(fits, key=lambda p: (p.throughput, -p.p99_ms)), ""


def path_times(point: Point) -> dict[str, float]:
    """Per image, server side: entry queue, Python stages, mask_rcnn queue and compute;
    bls's from its own metrics (Triton's statistics end when its execute returns)."""
    b = point.breakdown
    rcnn = b.get(MODEL_NAME, {"queue_ms": 0.0, "compute_ms": 0.0})
    out = {"rcnn_queue": rcnn["queue_ms"], "rcnn_compute": rcnn["compute_ms"]}
    if point.target == "bls":
        bls, stages = b[PIPELINE_NAME], b.get(STAGES_KEY, {})
        out |= {"python": stages.get("prepare_ms", 0.0) + stages.get("finish_ms", 0.0),
                "bls_call": stages.get("model_ms", 0.0), "batch": bls["batch"],
                "entry_queue": bls["queue_ms"] + bls["compute_ms"]}
        return out | {"server": out["entry_queue"] + stages.get("total_ms", 0.0)}
    if point.target == "ensemble":
        pre, post = b[PREPROCESS_NAME], b[POSTPROCESS_NAME]
        out |= {"python": pre["compute_ms"] + post["compute_ms"],
                "entry_queue": pre["queue_ms"] + post["queue_ms"]}
    return out | {"server": sum(out.get(k, 0.0) for k in ("rcnn_queue", "rcnn_compute", "python",
                                                          "entry_queue"))}


def explain(bls: Point, ens: Point, bare: Point | None) -> str:
    """One line on where the difference between pipeline_bls and the ensemble comes from."""
    ratio = bls.throughput / ens.throughput - 1 if ens.throughput else float("nan")
    a, e = path_times(bls), path_times(ens)
    parts = [f"equal within {EQUAL_WITHIN:.0%}" if abs(ratio) < EQUAL_WITHIN else
             f"pipeline_bls {'faster' if ratio > 0 else 'slower'} by {abs(ratio):.0%}",
             f"mask_rcnn compute {a['rcnn_compute']:.0f} vs {e['rcnn_compute']:.0f} ms/img "
             f"({a['rcnn_compute'] / a['server'] if a['server'] else 0:.0%} of bls server time)",
             f"Python stages {a['python']:.0f} vs {e['python']:.0f} ms/img"]
    if a.get("bls_call"):
        parts.append(f"pipeline_bls's mask_rcnn call adds {a['bls_call'] - a['rcnn_queue'] - a['rcnn_compute']:.0f}"
                     f" ms/img beyond the model's queue and compute (BLS IPC)")
    if a["rcnn_queue"] > 0.1 * a["server"] or e["rcnn_queue"] > 0.1 * e["server"]:
        parts.append(f"waiting for a mask_rcnn instance {a['rcnn_queue']:.0f} vs {e['rcnn_queue']:.0f} ms")
    parts.append(f"server CPU {bls.server_cpu_ms_per_image:.0f} vs {ens.server_cpu_ms_per_image:.0f} ms/img")
    if bare is not None and bare.throughput:
        parts.append(f"bare model {bare.throughput:.2f} img/s (bls at {bls.throughput / bare.throughput:.0%} of it)")
    return "; ".join(parts)


def print_results(points: list[Point], configs: list[SweepConfig], concurrency, budget_ms,
                  repository: str) -> dict:
    print("\n== Sweep: closed-loop gRPC (asyncio), per point: throughput = answered / wall "
          "time; latency per request as the client saw it")
    print(h.table(["configuration", "target", "conc", "n", "err", "img/s", "p50 ms", "p90 ms",
                   "p99 ms", "srv CPU ms/img", "srv cores", "load"], [
        [p.config, p.target, p.concurrency, p.answered, p.errors, h.fmt(p.throughput, 2),
         h.fmt(p.p50_ms), h.fmt(p.p90_ms), h.fmt(p.p99_ms), h.fmt(p.server_cpu_ms_per_image),
         h.fmt(p.server_cpu_util, 2), h.fmt(p.loadavg_1m, 2)] for p in points], left=2))
    by_key = {(p.config, p.target, p.concurrency): p for p in points}
    keys = [(c.label, n) for c in configs for n in concurrency]
    comparison = []
    if {"bls", "ensemble"} <= {p.target for p in points}:
        print("\n== pipeline_bls vs ensemble (infer_pipeline), throughput at every concurrency "
              "(target: pipeline_bls >= ensemble)")
        rows = []
        for label, c in keys:
            bls, ens, bare = (by_key.get((label, t, c)) for t in TARGETS)
            if not bls or not ens:
                continue
            ratio = bls.throughput / ens.throughput if ens.throughput else float("nan")
            ok = bls.throughput >= ens.throughput
            comparison.append({"config": label, "concurrency": c, "bls": bls.throughput,
                               "ensemble": ens.throughput, "bare": bare.throughput if bare else None,
                               "ratio": ratio, "bls_ge_ensemble": ok, "why": explain(bls, ens, bare)})
            rows.append([label, c, h.fmt(bls.throughput, 2), h.fmt(ens.throughput, 2),
                         h.fmt(bare.throughput, 2) if bare else "", f"{ratio - 1:+.1%}",
                         "PASS" if ok else ("~" if abs(ratio - 1) < EQUAL_WITHIN else "MISS")])
        print(h.table(["configuration", "conc", "bls img/s", "ensemble img/s", "bare img/s",
                       "bls vs ens", ""], rows))
        print("  (~: MISS within noise, under ±3 %)")
        print("\n  where the time goes, per image, server side, ms. python: ensemble = "
              "preprocess + postprocess compute (Triton statistics);\n  bls = prepare + "
              "finish from pipeline_bls's own metrics (pipeline_request_duration_us), worker-"
              "thread waits included.\n  entry queue: waiting for a pipeline_bls (or a "
              "preprocess/postprocess) instance, the batching delay included.")
        rows = []
        for (label, c), target in ((k, t) for k in keys for t in TARGETS):
            if p := by_key.get((label, target, c)):
                t = path_times(p)
                rows.append([label, c, target, *(h.fmt(t.get(k, 0.0)) for k in (
                    "entry_queue", "python", "rcnn_queue", "rcnn_compute", "server")),
                    h.fmt(p.p50_ms), h.fmt(t.get("batch", 0.0), 2) if target == "bls" else ""])
        print(h.table(["configuration", "conc", "target", "entry queue", "python", "rcnn queue",
                       "rcnn compute", "server sum", "client p50", "bls batch"], rows))
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
        commands = next(c for c in configs if c.label == best.config).tune_commands(repository)
        print(f"  {best.config} at concurrency {best.concurrency}: {best.throughput:.2f} img/s, "
              f"p50 {best.p50_ms:.0f} ms, p99 {best.p99_ms:.0f} ms ({best.answered} requests)")
        print("  apply it to a repository:\n" + "\n".join(f"    {line}" for line in commands))
        recommendation = {"config": best.config, "spec": best.spec, "concurrency": best.concurrency,
                          "throughput": best.throughput, "p99_ms": best.p99_ms, "tune_commands": commands}
    return {"comparison": comparison, "recommendation": recommendation, "recommendation_note": reason}


def plot(points: list[Point], configs: list[SweepConfig], path: Path, title: str, budget_ms) -> None:
    """Throughput and p99 against concurrency: colour = configuration, line = target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, config in enumerate(configs):
        for target, (line, marker) in {"bls": ("-", "o"), "ensemble": ("--", "s"), "bare": (":", "^")}.items():
            pts = sorted((p for p in points if p.config == config.label and p.target == target
                          and p.answered), key=lambda p: p.concurrency)
            for ax, key in zip(axes, ("throughput", "p99_ms")):
                ax.plot([p.concurrency for p in pts], [getattr(p, key) for p in pts], line,
                        marker=marker, color=colours[i % len(colours)], label=f"{target}: {config.label}")
    ticks = sorted({p.concurrency for p in points})
    for ax, label in zip(axes, ("throughput (images/s)", "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set(xlabel="concurrency (requests in flight)", ylabel=label, title=label.split(" (")[0])
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(True, alpha=0.3)
    if budget_ms is not None:
        axes[1].axhline(budget_ms, color="red", alpha=0.5, linewidth=1, label="latency budget")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv) -> argparse.Namespace:
    p = h.parser("benchmarks.sweep", __doc__, "repository", "size", "image", "generated")
    add = p.add_argument
    add("--config", action="append", default=[], metavar="MxT[:B][,k=v]",
        help=f"instance configuration (repeatable); default: {' '.join(DEFAULT_CONFIGS)}")
    add("--concurrency", type=number_list(int, 1), default=(1, 2, 4, 8), help="levels (default 1,2,4,8)")
    add("--targets", default="bls,ensemble,bare", help="which of bls, ensemble, bare (default all)")
    add("--requests", type=int, default=40, help="requests per point at most (default 40)")
    add("--max-seconds", type=float, default=300, help="seconds per point at most (default 300)")
    add("--warmup", type=int, default=2, help="warm-up requests per image and instance (default 2)")
    add("--timeout", type=float, default=h.REQUEST_TIMEOUT_S, help="seconds per request")
    add("--latency-budget-ms", type=float, help="p99 the recommendation must stay within")
    add("--out", type=Path, default=h.ROOT / "build" / "sweep", help="output folder (build/sweep)")
    add("--no-plot", action="store_true", help="skip sweep.png")
    add("--stand-in", type=number_list(float, 0), metavar="MS[,MS...]",
        help="serve benchmarks/standin.py as mask_rcnn, answering after each latency (ms)")
    add("--stand-in-detections", type=int, default=20, help="detections per stand-in answer")
    add("--stand-in-mask-resolution", type=int, default=28, help="M of its masks; 0: none")
    add("--compute-repeats", type=int, default=20, help="repetitions of the in-process compute")
    args = h.parse(p, argv, (lambda a: a.stand_in and a.repository is not None,
                             "--stand-in builds its own repository; leave --repository out"),
                   (lambda a: a.stand_in_detections < 0 or a.stand_in_mask_resolution < 0,
                    "--stand-in-detections and --stand-in-mask-resolution must be >= 0"),
                   (lambda a: a.requests < 1 or a.max_seconds <= 0 or a.warmup < 0,
                    "need --requests >= 1, --max-seconds > 0, --warmup >= 0"))
    try:
        args.configs = [parse_config(c) for c in (args.config or (STANDIN_CONFIGS if args.stand_in
                                                                  else DEFAULT_CONFIGS))]
    except ValueError as e:
        p.error(f"--config: {e}")
    args.configs = [replace(c, standin_ms=ms) for ms in args.stand_in or [None] for c in args.configs]
    labels = [c.label for c in args.configs]
    if len(set(labels)) != len(labels):
        p.error(f"--config: the same configuration twice ({labels})")
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.target_names or set(args.target_names) - set(TARGETS):
        p.error(f"--targets: unknown {sorted(set(args.target_names) - set(TARGETS))}; choose "
                f"from {', '.join(TARGETS)}")
    return args


def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main(argv: list[str] | None = None) -> int:
    import tritonclient.grpc as grpcclient

    from bls.pipeline import prepare
    from client.server import ServerFailed
    from export.torchscript import read_metadata

    args = parse_args(argv)
    command, machine = h.begin("benchmarks.sweep", argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = h.images(args.image, args.generated)
    scratch = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    points, failures, compute, measure = [], {}, None, None
    try:
        if args.stand_in:
            from benchmarks import standin

            resolution = args.stand_in_mask_resolution or None
            sizes = (args.min_size or 800, args.max_size or 1333)
            source = standin.make_repository(scratch / "standin", args.stand_in_detections,
                                             resolution, *sizes)
            meta = standin.metadata(resolution, *sizes)
            print(f"model: stand-in (benchmarks/standin.py), {args.stand_in_detections} detections, "
                  f"masks {resolution or 'none'}, latency {', '.join(f'{ms:g}' for ms in args.stand_in)} ms")
            measure = InProcessCompute(images, meta, args.stand_in_detections, args.compute_repeats)
            compute = measure()
        else:
            repo = h.prepare_repository(args, scratch)
            source, meta = repo.path, read_metadata(h.model_file(repo.path))
            for note in repo.notes:
                print(f"note: {note}")
        print(f"model: {meta.source}, resize shortest edge {meta.min_size}, longest <= "
              f"{meta.max_size}; repository {source}\nimages: {', '.join(i.name for i in images)}")
        print(f"configurations: {'; '.join(c.label for c in args.configs)}; concurrency "
              f"{','.join(map(str, args.concurrency))}; targets {','.join(args.target_names)}; "
              f"{args.requests} requests or {args.max_seconds:.0f} s per point", flush=True)
        bare = [prepare(i.data, meta).model_input for i in images]
        for index, config in enumerate(args.configs):
            repo = scratch / f"repository-{index}"
            shutil.copytree(source, repo, copy_function=link_or_copy, ignore=shutil.ignore_patterns("__pycache__"))
            if config.standin_ms is not None:
                standin.configure(repo, config.standin_ms, args.stand_in_detections)
            for model, options in config.tunings():
                tune(repo, model, options)  # a new file: the hard-linked source stays as it was
            print(f"\n[{index + 1}/{len(args.configs)}] {config.label}:", flush=True)
            try:
                with h.serve(repo, args.out / f"triton-{index}.log") as server:
                    with grpcclient.InferenceServerClient(server.grpc_url) as sync:
                        batch = {t: h.batched(sync, TARGETS[t]) for t in ("bls", "ensemble")}
                    targets = [Target(t, TARGETS[t], [[h.tensor_input(grpcclient, MODEL_INPUT.name, x)]
                                                       for x in bare] if t == "bare" else
                                      [[h.make_input(grpcclient, i.data, batch[t])] for i in images])
                               for t in args.target_names]
                    points += asyncio.run(measure_config(server, config, targets, args, measure))
            except (ServerFailed, RuntimeError) as e:
                failures[config.label] = str(e)[:2000]
                print(f"  FAILED: {str(e)[:2000]}", file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(repo, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    summary = print_results(points, args.configs, args.concurrency, args.latency_budget_ms,
                            str(args.repository) if args.repository else "REPO")
    if compute is not None and points:
        summary |= print_efficiency(points, args.configs, machine["usable_cpus"], compute)
        summary["per_model_instance"] = recommend_per_instance(points, args.configs, args.latency_budget_ms)
    loadavg_end = os.getloadavg()
    print(f"\nload average at end: {h.loadavg()}")
    for label, message in failures.items():
        print(f"FAILED configuration {label}: {message.splitlines()[0]}")
    rows = [p.row() for p in points]
    with open(args.out / "sweep.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    report = {"command": command, "machine": machine, "loadavg_end": loadavg_end,
              "model": {"min_size": meta.min_size, "max_size": meta.max_size, "source": meta.source,
                        "extra": meta.extra},
              "images": [{"name": i.name, "bytes": len(i.data)} for i in images],
              "configs": [asdict(c) | {"label": c.label} for c in args.configs],
              "concurrency": list(args.concurrency), "requests": args.requests,
              "max_seconds": args.max_seconds, "latency_budget_ms": args.latency_budget_ms,
              "points": [asdict(p) for p in points], "failures": failures, **summary}
    (args.out / "sweep.json").write_text(json.dumps(report, indent=2, default=str))
    written = [args.out / "sweep.csv", args.out / "sweep.json"]
    if not args.no_plot and points:
        plot(points, args.configs, args.out / "sweep.png",
             f"{meta.source}, input {meta.min_size}/{meta.max_size} px, {machine['usable_cpus']} CPUs "
             f"({machine['cpu_model']}), images: {', '.join(i.name for i in images)}; load "
             f"{machine['loadavg_start'][0]:.1f}->{loadavg_end[0]:.1f}", args.latency_budget_ms)
        written.append(args.out / "sweep.png")
    print("written: " + ", ".join(str(p) for p in written))
    return 1 if failures or not points else 0


if __name__ == "__main__":
    h.run_main(main)
