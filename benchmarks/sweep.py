"""python -m benchmarks.sweep: throughput and latency over concurrency x instance configurations
(MxT[:B][,workers=N,delay=US,batch=N,stages=N]) for pipeline_bls, the ensemble and the bare mask_rcnn.

  python -m benchmarks.sweep --min-size 320 --concurrency 1,2,4 --config 1x2 --config 2x1 --requests 20
  python -m benchmarks.sweep --repository build/repository --image photo.jpg --latency-budget-ms 8000
  python -m benchmarks.sweep --stand-in 0,5,10,25 --image photo.jpg   # mask_rcnn at GPU speed

Writes sweep.csv, sweep.json, sweep.png, triton-<i>.log to --out; recommends a configuration
(`python -m export tune --from-sweep` applies the stand-in's). Reading it: docs/benchmarks.md.
"""

from __future__ import annotations

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
from collections import Counter, namedtuple
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks import harness as h
from bls.contract.parameters import PIPELINE_PARAMETERS
from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, PIPELINE_NAME,
                                  POSTPROCESS_NAME, PREPROCESS_NAME)
from client.metrics import scrape
from export.tune import TuneOptions, tune

DEFAULT_CONFIGS = ("1x2", "2x1", "1x2:2", "2x1:2")
STANDIN_CONFIGS = ("1x1:1,workers=1", "1x1:1", "1x1:2,workers=1", "1x1:2")
DEFAULT_WORKER_THREADS = PIPELINE_PARAMETERS.read({})["worker_threads"]
TARGETS = {"bls": PIPELINE_NAME, "ensemble": ENSEMBLE_NAME, "bare": MODEL_NAME}
PATHS = {"bls": (PIPELINE_NAME, MODEL_NAME), "ensemble": (PREPROCESS_NAME, MODEL_NAME, POSTPROCESS_NAME),
         "bare": (MODEL_NAME,)}
STAGES_KEY = "pipeline_bls stages"  # Point.breakdown key of stage_means()
EQUAL_WITHIN = 0.03  # |bls / ensemble - 1| below this reads as "equal within noise"
SPEC = re.compile(r"^(?P<m>\d+)x(?P<t>\d+)(?::(?P<b>\d+))?(?P<extra>(?:,[a-z]+=\d+)*)$")
KEYS = {"workers": "worker_threads", "delay": "delay_us", "batch": "max_batch_size", "stages": "stage_instances"}
Target = namedtuple("Target", "name model inputs")  # inputs: one list of InferInput per image

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
        text = (f"stand-in {self.standin_ms:g} ms x{self.rcnn_instances}" if self.standin_ms is not None else
                f"rcnn {self.rcnn_instances}x{self.rcnn_threads and f'{self.rcnn_threads}t' or 'default'}")
        text += f", bls {self.bls_instances}" + (f", stages {self.stages}" if self.stages != self.bls_instances else "")
        return text + "".join(f", {k} {getattr(self, v)}" for k, v in list(KEYS.items())[:3]
                              if getattr(self, v) is not None)

    def tunings(self) -> list[tuple[str, TuneOptions]]:
        """What export/tune.py applies to the scratch repository, per model."""
        return [(MODEL_NAME, TuneOptions(instances=self.rcnn_instances,
                                         intra_op_threads=None if self.standin_ms is not None else self.rcnn_threads)),
                (PIPELINE_NAME, TuneOptions(instances=self.bls_instances, worker_threads=self.worker_threads,
                                            max_queue_delay_us=self.delay_us, max_batch_size=self.max_batch_size)),
                (PREPROCESS_NAME, TuneOptions(instances=self.stages)),
                (POSTPROCESS_NAME, TuneOptions(instances=self.stages))]

    def tune_commands(self, repository: str = "REPO") -> list[str]:
        return [shlex.join(["python", "-m", "export", "tune", "--repository", repository, "--model", model,
                            *(a for k, v in o.given().items() for a in ("--" + k.replace("_", "-"), str(v)))])
                for model, o in self.tunings()]

def parse_config(text: str) -> SweepConfig:
    """``MxT[:B][,key=value...]`` -> SweepConfig; ValueError naming what is wrong."""
    match = SPEC.match(spec := text.strip().replace(" ", ""))
    if not match:
        raise ValueError(f"configuration {text!r}: expected MxT[:B][,key=value...], e.g. '1x2', '2x1:2', "
                         f"'1x2:2,workers=2,delay=5000'")
    values = {"rcnn_instances": int(match["m"]), "rcnn_threads": int(match["t"]), "bls_instances": int(match["b"] or 1)}
    for key, _, number in (item.partition("=") for item in match["extra"].split(",") if item):
        if key not in KEYS:
            raise ValueError(f"configuration {text!r}: unknown key {key!r} (keys: {', '.join(KEYS)})")
        values[KEYS[key]] = int(number)
    if min((config := SweepConfig(spec, **values)).rcnn_instances, config.bls_instances, config.stages) < 1:
        raise ValueError(f"configuration {text!r}: instance counts must be at least 1")
    return config

# One point: throughput = answered images / s; server_cpu_util = server CPU s / wall s (1.0: one core);
# compute_ms: in-process compute just before (stand-in); paired_c1: paired_latency() at concurrency 1;
# cpu_ms_per_image: by server process and "client"; breakdown: statistics_delta by model, stage_means.
Point = make_dataclass("Point", (
    "config spec target model concurrency answered errors seconds throughput p50_ms p90_ms p99_ms mean_ms max_ms "
    "server_cpu_ms_per_image server_cpu_util client_cpu_util loadavg_1m").split() + [
    ("compute_ms", float, field(default=float("nan"))), ("latencies_ms", list, field(default_factory=list))] + [
    (k, dict, field(default_factory=dict)) for k in ("paired_c1", "cpu_ms_per_image", "breakdown", "error_messages")])

def row(p: Point) -> dict:
    """A point as one CSV row: its figures flattened."""
    out = {k: v for k, v in asdict(p).items() if not isinstance(v, (dict, list))}
    out |= {f"cpu_{k}_ms": v for k, v in p.cpu_ms_per_image.items()}
    out |= {f"paired_c1_{k}": round(v, 3) for k, v in p.paired_c1.items()}
    for model, v in p.breakdown.items():
        out |= ({f"bls_{k}": round(x, 2) for k, x in v.items() if k.endswith("_ms")} if model == STAGES_KEY else
                {f"{model}_{k}": round(v[k], 2) for k in ("queue_ms", "compute_ms")}
                | ({f"{model}_batch": round(v["batch"], 2)} if model == PIPELINE_NAME else {}))
    return out

def process_cpu_seconds(server) -> dict[str, float]:
    """CPU seconds of the server's live processes, summed by model (its stubs) or name."""
    out = Counter()
    for p in h.processes(server):
        out[p["name"].removeprefix("stub:")] += p["cpu_s"]
    return out

async def measure_config(server, config: SweepConfig, targets: list[Target], args, compute=None) -> list[Point]:
    """Warm-up (every image on every instance), then per concurrency and target one closed loop;
    ``compute`` (InProcessCompute) measured before each concurrency level, the server idle."""
    import tritonclient.grpc.aio as grpc_aio

    client, points = grpc_aio.InferenceServerClient(server.grpc_url), []

    def sender(t: Target):
        return lambda k, w: client.infer(t.model, t.inputs[k % len(t.inputs)], client_timeout=args.timeout)

    try:
        width = max(config.rcnn_instances, config.bls_instances, config.stages)
        for t in targets:
            n = args.warmup * len(t.inputs) * width
            if n and (done := await h.closed_loop(sender(t), width, n, args.max_seconds * 2))["errors"]:
                raise RuntimeError(f"warm-up of {t.model} failed: {done['errors']}")
            print(f"  warm-up {t.name}: {n} requests", file=sys.stderr, flush=True)
        for i, c in enumerate(args.concurrency):
            compute_ms = compute()["mean_ms"] if compute is not None else float("nan")
            paired = {t.name: await paired_latency(client, t, compute, min(args.requests, 100), args.timeout)
                      for t in targets if compute is not None and c == 1 and t.name != "bare"}
            for t in h.rotated(targets, i):
                load, stats0 = os.getloadavg()[0], h.model_statistics(await client.get_inference_statistics())
                scraped = await asyncio.to_thread(scrape, server.metrics_url) if t.name == "bls" else None
                cpu0, client0 = process_cpu_seconds(server), time.process_time()
                run = await h.closed_loop(sender(t), c, args.requests, args.max_seconds, first=i)
                cpu1, client_cpu = process_cpu_seconds(server), time.process_time() - client0
                stats1 = await h.settled_statistics(client, t.model, h.answered(stats0, t.model) + run["issued"])
                breakdown = h.statistics_delta(stats0, stats1, PATHS[t.name])
                if t.name == "bls":
                    breakdown[STAGES_KEY] = h.stage_means(scraped, await asyncio.to_thread(scrape, server.metrics_url))
                s, n, secs = h.summary(run["latencies"]), len(run["latencies"]), max(run["seconds"], 1e-9)
                server_cpu = sum(cpu1.values()) - sum(cpu0.values())
                cpu = {k: round((v - cpu0.get(k, 0.0)) * 1000 / n, 3) for k, v in cpu1.items()
                       if n and v > cpu0.get(k, 0.0)} | ({"client": round(client_cpu * 1000 / n, 3)} if n else {})
                p = Point(config.label, config.spec, t.name, t.model, c, n, sum(run["errors"].values()), round(secs, 3),
                          n / secs, *(s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms")),
                          server_cpu * 1000 / n if n else float("nan"), server_cpu / secs, client_cpu / secs, load,
                          compute_ms, [round(v * 1000, 2) for v in run["latencies"]], paired.get(t.name, {}), cpu,
                          breakdown, run["errors"])
                points.append(p)
                print(f"  {config.label} | {t.name:<8} c={c}: {p.throughput:.2f} img/s, p50 {h.fmt(p.p50_ms)} ms, "
                      f"p99 {h.fmt(p.p99_ms)} ms, {n} answered, {p.errors} errors, {secs:.1f} s, load {load:.2f}",
                      file=sys.stderr, flush=True)
    finally:
        await client.close()
    return points

class InProcessCompute:
    """pipeline_bls's own work per image here, one thread: prepare and finish around the
    stand-in's outputs. Called: medians of ``repeats`` per image, ms, and "rate" (img/s, one core)."""

    def __init__(self, images: list[h.Image], meta, detections: int, repeats: int):
        import cv2

        from benchmarks.standin import StandIn
        from bls.backend.process import keep_freed_memory
        from bls.contract.parameters import RequestOptions

        cv2.setNumThreads(1)
        keep_freed_memory()  # as the served models do
        self.images, self.meta, self.repeats = images, meta, repeats
        self.standin = StandIn([s.name for s in meta.outputs], detections, meta.mask_resolution, len(meta.class_names))
        self.options = RequestOptions(meta.score_threshold)

    def one(self, k: int) -> tuple[float, float]:
        """(prepare ms, finish ms) of image k (cycling), once."""
        from bls.pipeline.steps import finish, prepare

        t_prepare, prepared = h.timed(prepare, self.images[k % len(self.images)].data, self.meta)
        outputs = self.standin(*prepared.model_input.shape[1:])
        return t_prepare * 1000, h.timed(finish, outputs, prepared.original_size, self.meta, self.options)[0] * 1000

    def __call__(self) -> dict:
        per_image = {}
        for k, image in enumerate(self.images):
            runs = np.array([self.one(k) for _ in range(self.repeats + 1)][1:])
            per_image[image.name] = {"prepare_ms": float(np.median(runs[:, 0])), "finish_ms": float(
                np.median(runs[:, 1])), "total_ms": float(np.median(runs.sum(axis=1)))}
        mean_ms = float(np.mean([r["total_ms"] for r in per_image.values()]))
        return {"per_image": per_image, "mean_ms": mean_ms, "rate": 1000 / mean_ms, "repeats": self.repeats}

async def paired_latency(client, t: Target, compute: InProcessCompute, n: int, timeout: float) -> dict:
    """Concurrency 1, paired: per iteration the in-process compute, then the served request;
    medians of served, compute and their difference (the machine's drift hits both alike)."""
    rows = []
    for k in range(n):
        work = sum(compute.one(k))
        seconds, _ = await h.timed_async(client.infer(t.model, t.inputs[k % len(t.inputs)], client_timeout=timeout))
        rows.append((seconds * 1000, work))
    served, work = np.array(rows).T
    return {"pairs": n, "served_ms": float(np.median(served)), "compute_ms": float(np.median(work)),
            "over_ms": float(np.median(served - work))}

def ideal_throughput(config: SweepConfig, concurrency: int, cores: int, rate: float) -> float:
    """min(concurrency, cores) x the in-process rate, at most stand-in instances / latency."""
    ideal = min(concurrency, cores) * rate
    return min(ideal, config.rcnn_instances * 1000 / config.standin_ms) if config.standin_ms else ideal

def print_efficiency(points: list[Point], configs: list[SweepConfig], cores: int, compute: dict) -> dict:
    print(f"\n== In process, one thread: prepare + finish per image, median of {compute['repeats']}, ms")
    print(h.table(["image", "prepare", "finish", "sum"], [[name, *(h.fmt(r[k], 1) for k in (
        "prepare_ms", "finish_ms", "total_ms"))] for name, r in compute["per_image"].items()]))
    print(f"  mean {compute['mean_ms']:.1f} ms/img: {compute['rate']:.1f} img/s on one core, "
          f"{cores * compute['rate']:.1f} img/s on {cores} cores (each point uses the compute measured just before it)")
    print("\n== Efficiency: throughput / ideal, ideal = min(concurrency, cores) x in-process rate (at most stand-in "
          "instances / latency);\n   over = mean latency - (compute + stand-in latency), paired at concurrency 1")
    rows, report, top = [], [], max(p.concurrency for p in points)
    for config in configs:
        for p in (q for q in points if q.config == config.label):
            compute_ms = p.compute_ms if p.compute_ms == p.compute_ms else compute["mean_ms"]
            ideal = ideal_throughput(config, p.concurrency, cores, 1000 / compute_ms)
            over = (p.paired_c1["over_ms"] if p.paired_c1 else p.mean_ms - compute_ms) - (config.standin_ms or 0)
            item = {"config": config.label, "target": p.target, "concurrency": p.concurrency, "throughput": p.throughput,
                    "ideal": ideal, "compute_ms": compute_ms, "efficiency": p.throughput / ideal, "over_compute_ms": over}
            verdicts, instant = [], p.target == "bls" and config.standin_ms == 0
            if instant and p.concurrency == 1:
                item["latency_target_met"] = over <= 5.0
                verdicts.append(f"c1 latency <= compute + 5 ms: {h.verdict(over <= 5.0)}")
            if instant and p.concurrency == top >= cores:
                item["throughput_target_met"] = item["efficiency"] >= 0.85
                verdicts.append(f"c{top} >= 85 % of cores x rate: {h.verdict(item['efficiency'] >= 0.85)}")
            report.append(item)
            rows += [[config.label, p.target, p.concurrency, h.fmt(p.throughput, 1), h.fmt(compute_ms, 1),
                      h.fmt(ideal, 1), f"{item['efficiency']:.0%}", h.fmt(p.mean_ms, 1), f"{over:+.1f}",
                      "; ".join(verdicts)]] if p.target != "bare" else []
    print(h.table(["configuration", "target", "conc", "img/s", "compute ms", "ideal", "efficiency", "mean ms",
                   "over", "targets (instant model)"], rows, left=2))
    print(f"\n  where the CPU goes at concurrency {top}, ms per image by process (the in-process compute beside it):")
    for p in (q for q in points if q.concurrency == top and q.target != "bare"):
        print(f"  - {p.config}, {p.target}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(
            p.cpu_ms_per_image.items(), key=lambda kv: -kv[1]) if v >= 0.05) + f"; compute {p.compute_ms:.1f}")
    return {"in_process": compute, "efficiency": report}

def recommend_per_instance(points: list[Point], configs: list[SweepConfig], budget_ms) -> list[dict]:
    """Per stand-in latency: pipeline_bls instances and worker_threads per mask_rcnn instance."""
    out = []
    print("\n== Per mask_rcnn instance (best pipeline_bls throughput, no errors, within the latency budget if given)")
    for latency in dict.fromkeys(c.standin_ms for c in configs):
        labels = {c.label: c for c in configs if c.standin_ms == latency}
        best, reason = recommend([p for p in points if p.config in labels], budget_ms)
        if best is None:
            out.append({"standin_ms": latency, "note": reason})
            print(f"  stand-in {latency:g} ms: none: {reason}")
            continue
        c = labels[best.config]
        out.append(r := {"standin_ms": latency, "config": c.label, "throughput": best.throughput, "p99_ms": best.p99_ms,
                         "concurrency": best.concurrency, "worker_threads": c.worker_threads or DEFAULT_WORKER_THREADS,
                         "bls_instances_per_model_instance": c.bls_instances / c.rcnn_instances})
        print(f"  model latency {latency:g} ms: {r['bls_instances_per_model_instance']:g} pipeline_bls instance(s) x "
              f"{r['worker_threads']} worker thread(s) per mask_rcnn instance ({r['throughput']:.1f} img/s at "
              f"concurrency {r['concurrency']}, p99 {r['p99_ms']:.0f} ms)")
    print("  apply one to a repository: python -m export tune --repository REPO --model pipeline_bls --from-sweep "
          "build/sweep/sweep.json --model-latency-ms MS")
    return out

def recommend(points: list[Point], budget_ms: float | None) -> tuple[Point | None, str]:
    """Best pipeline_bls throughput with no errors and p99 within the budget."""
    bls = [p for p in points if p.target == "bls" and p.errors == 0 and p.answered]
    if not bls:
        return None, "no pipeline_bls point without errors"
    if not (fits := [p for p in bls if budget_ms is None or p.p99_ms <= budget_ms]):
        best = min(bls, key=lambda p: p.p99_ms)
        return None, (f"no pipeline_bls point has p99 <= {budget_ms:.0f} ms; the lowest p99 is {best.p99_ms:.0f} ms "
                      f"({best.config}, concurrency {best.concurrency})")
    return max(fits, key=lambda p: (p.throughput, -p.p99_ms)), ""

def path_times(point: Point) -> dict[str, float]:
    """Per image, server side, ms: entry queue, Python stages, mask_rcnn queue and compute
    (bls's from its own metrics: Triton's statistics end when its execute returns)."""
    b = point.breakdown
    rcnn = b.get(MODEL_NAME, {"queue_ms": 0.0, "compute_ms": 0.0})
    out = {"rcnn_queue": rcnn["queue_ms"], "rcnn_compute": rcnn["compute_ms"]}
    if point.target == "bls":
        bls, st = b[PIPELINE_NAME], b.get(STAGES_KEY, {})
        out |= {"python": st.get("prepare_ms", 0.0) + st.get("finish_ms", 0.0), "bls_call": st.get("model_ms", 0.0),
                "batch": bls["batch"], "entry_queue": bls["queue_ms"] + bls["compute_ms"]}
        return out | {"server": out["entry_queue"] + st.get("total_ms", 0.0)}
    if point.target == "ensemble":
        pre, post = b[PREPROCESS_NAME], b[POSTPROCESS_NAME]
        out |= {"python": pre["compute_ms"] + post["compute_ms"], "entry_queue": pre["queue_ms"] + post["queue_ms"]}
    return out | {"server": sum(out.get(k, 0.0) for k in ("rcnn_queue", "rcnn_compute", "python", "entry_queue"))}

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
        parts.append(f"pipeline_bls's mask_rcnn call adds {a['bls_call'] - a['rcnn_queue'] - a['rcnn_compute']:.0f} "
                     f"ms/img beyond the model's queue and compute (BLS IPC)")
    if a["rcnn_queue"] > 0.1 * a["server"] or e["rcnn_queue"] > 0.1 * e["server"]:
        parts.append(f"waiting for a mask_rcnn instance {a['rcnn_queue']:.0f} vs {e['rcnn_queue']:.0f} ms")
    parts.append(f"server CPU {bls.server_cpu_ms_per_image:.0f} vs {ens.server_cpu_ms_per_image:.0f} ms/img")
    if bare is not None and bare.throughput:
        parts.append(f"bare model {bare.throughput:.2f} img/s (bls at {bls.throughput / bare.throughput:.0%} of it)")
    return "; ".join(parts)

def print_results(points: list[Point], configs: list[SweepConfig], concurrency, budget_ms, repository: str) -> dict:
    print("\n== Sweep: closed-loop gRPC (asyncio), per point: throughput = answered / wall time; latency per "
          "request as the client saw it")
    print(h.table(["configuration", "target", "conc", "n", "err", "img/s", "p50 ms", "p90 ms", "p99 ms",
                   "srv CPU ms/img", "srv cores", "load"], [
        [p.config, p.target, p.concurrency, p.answered, p.errors, h.fmt(p.throughput, 2), h.fmt(p.p50_ms),
         h.fmt(p.p90_ms), h.fmt(p.p99_ms), h.fmt(p.server_cpu_ms_per_image), h.fmt(p.server_cpu_util, 2),
         h.fmt(p.loadavg_1m, 2)] for p in points], left=2))
    by_key = {(p.config, p.target, p.concurrency): p for p in points}
    keys, comparison = [(c.label, n) for c in configs for n in concurrency], []
    if {"bls", "ensemble"} <= {p.target for p in points}:
        print("\n== pipeline_bls vs ensemble (infer_pipeline), throughput at every concurrency "
              "(target: pipeline_bls >= ensemble)")
        rows = []
        for label, c in keys:
            bls, ens, bare = (by_key.get((label, t, c)) for t in TARGETS)
            if bls and ens:
                ratio = bls.throughput / ens.throughput if ens.throughput else float("nan")
                comparison.append({"config": label, "concurrency": c, "bls": bls.throughput, "ensemble": ens.throughput,
                                   "bare": bare.throughput if bare else None, "ratio": ratio,
                                   "bls_ge_ensemble": bls.throughput >= ens.throughput, "why": explain(bls, ens, bare)})
                rows.append([label, c, h.fmt(bls.throughput, 2), h.fmt(ens.throughput, 2),
                             h.fmt(bare.throughput, 2) if bare else "", f"{ratio - 1:+.1%}",
                             "PASS" if comparison[-1]["bls_ge_ensemble"] else
                             "~" if abs(ratio - 1) < EQUAL_WITHIN else "MISS"])
        print(h.table(["configuration", "conc", "bls img/s", "ensemble img/s", "bare img/s", "bls vs ens", ""], rows))
        print("  (~: MISS within noise, under ±3 %)\n\n  where the time goes, per image, server side, ms (python: "
              "ensemble = preprocess + postprocess compute;\n  bls = prepare + finish from its own metrics; entry "
              "queue: waiting for an instance, batching delay included)")
        print(h.table(["configuration", "conc", "target", "entry queue", "python", "rcnn queue", "rcnn compute",
                       "server sum", "client p50", "bls batch"], [
            [label, c, t, *(h.fmt(pt.get(k, 0.0)) for k in ("entry_queue", "python", "rcnn_queue", "rcnn_compute",
                                                            "server")), h.fmt(p.p50_ms),
             h.fmt(pt.get("batch", 0.0), 2) if t == "bls" else ""]
            for (label, c) in keys for t in TARGETS if (p := by_key.get((label, t, c))) and (pt := path_times(p))]))
        print("\n  why, per concurrency (bls vs ensemble):\n" + "\n".join(
            f"  - {x['config']}, c={x['concurrency']}: {x['why']}" for x in comparison))
    best, reason = recommend(points, budget_ms)
    print(f"\n== Recommendation ({f'p99 <= {budget_ms:.0f} ms' if budget_ms is not None else 'no latency budget given'}"
          f", no errors): best pipeline_bls throughput")
    if best is None:
        print(f"  none: {reason}")
        return {"comparison": comparison, "recommendation": None, "recommendation_note": reason}
    commands = next(c for c in configs if c.label == best.config).tune_commands(repository)
    print(f"  {best.config} at concurrency {best.concurrency}: {best.throughput:.2f} img/s, p50 {best.p50_ms:.0f} ms, "
          f"p99 {best.p99_ms:.0f} ms ({best.answered} requests)\n  apply it to a repository:\n"
          + "\n".join(f"    {line}" for line in commands))
    return {"comparison": comparison, "recommendation_note": reason, "recommendation": {
        "config": best.config, "spec": best.spec, "concurrency": best.concurrency, "throughput": best.throughput,
        "p99_ms": best.p99_ms, "tune_commands": commands}}

def plot(points: list[Point], configs: list[SweepConfig], path: Path, title: str, budget_ms) -> None:
    """Throughput and p99 against concurrency: colour = configuration, line style = target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (i, config), (t, style) in ((c, s) for c in enumerate(configs) for s in zip(TARGETS, ("-o", "--s", ":^"))):
        pts = sorted((p for p in points if p.config == config.label and p.target == t and p.answered),
                     key=lambda p: p.concurrency)
        for ax, key in zip(axes, ("throughput", "p99_ms")):
            ax.plot([p.concurrency for p in pts], [getattr(p, key) for p in pts], style,
                    color=colours[i % len(colours)], label=f"{t}: {config.label}")
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

def parse_args(argv):
    p = h.parser("benchmarks.sweep", __doc__, "repository", "size", "image", "generated")
    numbers = lambda cast: lambda text: tuple(cast(v) for v in text.split(",") if v.strip())  # noqa: E731
    for flag, kw in {"--config": dict(action="append", default=[], metavar="MxT[:B][,k=v]",
                                      help=f"instance configuration (repeatable; default {' '.join(DEFAULT_CONFIGS)})"),
                     "--concurrency": dict(type=numbers(int), default=(1, 2, 4, 8), help="levels, e.g. 1,2,4,8"),
                     "--targets": dict(default="bls,ensemble,bare", help="of bls, ensemble, bare (default all)"),
                     "--requests": dict(type=int, default=40, help="requests per point at most (default 40)"),
                     "--max-seconds": dict(type=float, default=300, help="seconds per point at most (default 300)"),
                     "--warmup": dict(type=int, default=2, help="warm-up requests per image and instance (2)"),
                     "--timeout": dict(type=float, default=h.REQUEST_TIMEOUT_S, help="seconds per request"),
                     "--latency-budget-ms": dict(type=float, help="p99 the recommendation must stay within"),
                     "--out": dict(type=Path, default=h.ROOT / "build" / "sweep", help="output folder (build/sweep)"),
                     "--no-plot": dict(action="store_true", help="skip sweep.png"),
                     "--stand-in": dict(type=numbers(float), metavar="MS[,MS...]",
                                        help="serve benchmarks/standin.py as mask_rcnn, answering after each latency"),
                     "--stand-in-detections": dict(type=int, default=20, help="detections per stand-in answer"),
                     "--stand-in-mask-resolution": dict(type=int, default=28, help="M of its masks (0: none)"),
                     "--compute-repeats": dict(type=int, default=20, help="repetitions of the in-process compute"),
                     }.items():
        p.add_argument(flag, **kw)
    args = h.parse(p, argv, (lambda a: not a.concurrency or min(a.concurrency) < 1, "--concurrency: numbers >= 1"),
                   (lambda a: a.stand_in is not None and (not a.stand_in or min(a.stand_in) < 0),
                    "--stand-in: numbers >= 0"),
                   (lambda a: a.stand_in and a.repository is not None,
                    "--stand-in builds its own repository; leave --repository out"),
                   (lambda a: a.stand_in_detections < 0 or a.stand_in_mask_resolution < 0,
                    "--stand-in-detections and --stand-in-mask-resolution must be >= 0"),
                   (lambda a: a.requests < 1 or a.max_seconds <= 0 or a.warmup < 0,
                    "need --requests >= 1, --max-seconds > 0, --warmup >= 0"))
    try:
        configs = [parse_config(c) for c in args.config or (STANDIN_CONFIGS if args.stand_in else DEFAULT_CONFIGS)]
    except ValueError as e:
        p.error(f"--config: {e}")
    args.configs = [replace(c, standin_ms=ms) for ms in args.stand_in or [None] for c in configs]
    if len({c.label for c in args.configs}) != len(args.configs):
        p.error(f"--config: the same configuration twice ({[c.label for c in args.configs]})")
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.target_names or set(args.target_names) - set(TARGETS):
        p.error(f"--targets: unknown {sorted(set(args.target_names) - set(TARGETS))}; choose from {', '.join(TARGETS)}")
    return args

def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

def main(argv: list[str] | None = None) -> int:
    import tritonclient.grpc as grpcclient

    from benchmarks import standin
    from bls.pipeline.steps import prepare
    from server.launcher import ServerFailed

    args = parse_args(argv)
    command, machine = h.begin("benchmarks.sweep", argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = h.images(args.image, args.generated)
    scratch = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    points, failures, compute, measure = [], {}, None, None
    try:
        if args.stand_in:
            resolution, sizes = args.stand_in_mask_resolution or None, (args.min_size or 800, args.max_size or 1333)
            source = standin.make_repository(scratch / "standin", args.stand_in_detections, resolution, *sizes)
            meta = standin.metadata(resolution, *sizes)
            print(f"model: stand-in (benchmarks/standin.py), {args.stand_in_detections} detections, masks "
                  f"{resolution or 'none'}, latency {', '.join(f'{ms:g}' for ms in args.stand_in)} ms")
            compute = (measure := InProcessCompute(images, meta, args.stand_in_detections, args.compute_repeats))()
        else:
            repo = h.prepare_repository(args, scratch)
            source, meta = repo.path, repo.meta
            print("".join(f"note: {note}\n" for note in repo.notes), end="")
        print(f"model: {meta.source}, resize shortest edge {meta.min_size}, longest <= {meta.max_size}; repository "
              f"{source}\nimages: {', '.join(i.name for i in images)}\nconfigurations: "
              f"{'; '.join(c.label for c in args.configs)}; concurrency {','.join(map(str, args.concurrency))}; "
              f"targets {','.join(args.target_names)}; {args.requests} requests or {args.max_seconds:.0f} s per point")
        bare = [[h.tensor_input(grpcclient, MODEL_INPUT.name, prepare(i.data, meta).model_input)] for i in images]
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
                        targets = [Target(t, TARGETS[t], bare if t == "bare" else [
                            [h.make_input(grpcclient, i.data, h.batched(sync, TARGETS[t]))] for i in images])
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
    print(f"\nload average at end: {h.loadavg()}" + "".join(
        f"\nFAILED configuration {label}: {message.splitlines()[0]}" for label, message in failures.items()))
    with open(args.out / "sweep.csv", "w", newline="") as out:
        rows = [row(p) for p in points]
        (writer := csv.DictWriter(out, list(dict.fromkeys(k for r in rows for k in r)))).writeheader()
        writer.writerows(rows)
    (args.out / "sweep.json").write_text(json.dumps({
        "command": command, "machine": machine, "loadavg_end": loadavg_end, "model": {
            "min_size": meta.min_size, "max_size": meta.max_size, "source": meta.source, "extra": meta.extra},
        "images": [{"name": i.name, "bytes": len(i.data)} for i in images],
        "configs": [asdict(c) | {"label": c.label} for c in args.configs], "concurrency": list(args.concurrency),
        "requests": args.requests, "max_seconds": args.max_seconds, "latency_budget_ms": args.latency_budget_ms,
        "points": [asdict(p) for p in points], "failures": failures, **summary}, indent=2, default=str))
    written = [args.out / "sweep.csv", args.out / "sweep.json"]
    if not args.no_plot and points:
        plot(points, args.configs, args.out / "sweep.png", f"{meta.source}, input {meta.min_size}/{meta.max_size} px, "
             f"{machine['usable_cpus']} CPUs ({machine['cpu_model']}), images: {', '.join(i.name for i in images)}; "
             f"load {machine['loadavg_start'][0]:.1f}->{loadavg_end[0]:.1f}", args.latency_budget_ms)
        written.append(args.out / "sweep.png")
    print("written: " + ", ".join(str(p) for p in written))
    return 1 if failures or not points else 0

if __name__ == "__main__":
    h.run_main(main)
