"""python -m benchmarks.sweep: throughput and latency over concurrency x instance configurations
(MxT[:B][,workers=N,delay=US,batch=N,stages=N]) for pipeline_bls, the ensemble and the bare
mask_rcnn; --stand-in MS[,MS...] serves mask_rcnn at GPU speed (benchmarks/standin.py).
Writes sweep.json, sweep.png and triton-<i>.log to --out, recommends a configuration
(`python -m export tune --from-sweep` applies the stand-in's). Reading it: docs/benchmarks.md.
"""

import asyncio
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
from types import SimpleNamespace

import numpy as np

from benchmarks import harness as h
from bls.contract.parameters import PIPELINE_PARAMETERS
from bls.contract.tensors import (ENSEMBLE_NAME, MODEL_INPUT, MODEL_NAME, PIPELINE_NAME,
                                  POSTPROCESS_NAME, PREPROCESS_NAME)
from client.metrics import scrape
from export.tune import TuneOptions, tune

DEFAULT_CONFIGS = ("1x2", "2x1", "1x2:2", "2x1:2")
STANDIN_CONFIGS = ("1x1:1,workers=1", "1x1:1", "1x1:2,workers=1", "1x1:2")
TARGETS = {"bls": PIPELINE_NAME, "ensemble": ENSEMBLE_NAME, "bare": MODEL_NAME}
PATHS = {"bls": (PIPELINE_NAME, MODEL_NAME), "bare": (MODEL_NAME,),
         "ensemble": (PREPROCESS_NAME, MODEL_NAME, POSTPROCESS_NAME)}
STAGES_KEY = "pipeline_bls stages"  # Point.breakdown key of stage_means()
SPEC = re.compile(r"^(?P<m>\d+)x(?P<t>\d+)(?::(?P<b>\d+))?(?P<extra>(?:,[a-z]+=\d+)*)$")
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
    standin_ms: float | None = None  # mask_rcnn is benchmarks/standin.py with this latency

    @property
    def stages(self) -> int:
        return self.bls_instances if self.stage_instances is None else self.stage_instances

    @property
    def label(self) -> str:
        if self.standin_ms is not None:
            text = f"stand-in {self.standin_ms:g} ms x{self.rcnn_instances}"
        else:
            threads = f"{self.rcnn_threads}t" if self.rcnn_threads else "default"
            text = f"rcnn {self.rcnn_instances}x{threads}"
        text += f", bls {self.bls_instances}"
        if self.stages != self.bls_instances:
            text += f", stages {self.stages}"
        for key in ("workers", "delay", "batch"):
            if getattr(self, KEYS[key]) is not None:
                text += f", {key} {getattr(self, KEYS[key])}"
        return text

    def tunings(self) -> list[tuple[str, TuneOptions]]:
        """What export/tune.py applies to the scratch repository, per model."""
        threads = None if self.standin_ms is not None else self.rcnn_threads
        bls = TuneOptions(instances=self.bls_instances, worker_threads=self.worker_threads,
                          max_queue_delay_us=self.delay_us, max_batch_size=self.max_batch_size)
        return [(MODEL_NAME, TuneOptions(instances=self.rcnn_instances, intra_op_threads=threads)),
                (PIPELINE_NAME, bls), (PREPROCESS_NAME, TuneOptions(instances=self.stages)),
                (POSTPROCESS_NAME, TuneOptions(instances=self.stages))]

    def tune_commands(self, repository: str = "REPO") -> list[str]:
        return [shlex.join(["python", "-m", "export", "tune", "--repository", repository,
                            "--model", model, *(a for k, v in options.given().items()
                                                for a in ("--" + k.replace("_", "-"), str(v)))])
                for model, options in self.tunings()]


def parse_config(text: str) -> SweepConfig:
    """``MxT[:B][,key=value...]`` -> SweepConfig; ValueError naming what is wrong."""
    spec = text.strip().replace(" ", "")
    match = SPEC.match(spec)
    if not match:
        raise ValueError(f"configuration {text!r}: expected MxT[:B][,key=value...], e.g. '2x1:2'")
    values = {"rcnn_instances": int(match["m"]), "rcnn_threads": int(match["t"]),
              "bls_instances": int(match["b"] or 1)}
    for key, _, number in (item.partition("=") for item in match["extra"].split(",") if item):
        if key not in KEYS:
            raise ValueError(f"configuration {text!r}: unknown key {key!r} ({', '.join(KEYS)})")
        values[KEYS[key]] = int(number)
    config = SweepConfig(spec, **values)
    if min(config.rcnn_instances, config.bls_instances, config.stages) < 1:
        raise ValueError(f"configuration {text!r}: instance counts must be at least 1")
    return config


@dataclass
class Point:
    """One (configuration, target, concurrency): throughput = answered images / wall s;
    server_cpu_util = server CPU s / wall s (1.0: one core); compute_ms: the in-process
    compute measured just before (stand-in); breakdown: statistics_delta by model, stage_means."""
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


def process_cpu_seconds(server) -> Counter:
    """CPU seconds of the server's live processes, summed by model (its stubs) or name."""
    out = Counter()
    for p in h.processes(server):
        out[p["name"].removeprefix("stub:")] += p["cpu_s"]
    return out


async def settled_statistics(client, model: str, expected: float) -> dict:
    """Triton's statistics once they count ``expected`` requests of ``model`` (a request is
    recorded when released, which can be just after its answer), at most 5 s later."""
    deadline = time.monotonic() + 5
    while True:
        stats = h.model_statistics(await client.get_inference_statistics())
        counted = stats.get(model, Counter())
        if counted["success"] + counted["fail"] >= expected or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.01)


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """pipeline_bls's own metrics between two scrapes: mean ms per request of each stage."""
    from bls.backend.metrics import DURATION_METRIC, OUTCOMES, REQUESTS_METRIC, STAGES
    from client.metrics import value

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    n = sum(delta(REQUESTS_METRIC, outcome=o) for o in OUTCOMES)
    return {"requests": n} | {f"{s}_ms": delta(DURATION_METRIC, stage=s) / n / 1000 if n else 0.0
                              for s in STAGES}


async def measure_point(server, client, config, target, c: int, args, first: int) -> Point:
    """One closed loop, with Triton's statistics, pipeline_bls's metrics and the CPU around it."""
    model, inputs = TARGETS[target.name], target.inputs
    load = os.getloadavg()[0]
    stats0 = h.model_statistics(await client.get_inference_statistics())
    scraped = await asyncio.to_thread(scrape, server.metrics_url) if target.name == "bls" else None
    cpu0, client0 = process_cpu_seconds(server), time.process_time()

    def send(k, worker):
        return client.infer(model, inputs[k % len(inputs)], client_timeout=args.timeout)

    run = await h.closed_loop(send, c, args.requests, args.max_seconds, first=first)
    cpu1, client_cpu = process_cpu_seconds(server), time.process_time() - client0
    done = stats0.get(model, Counter())
    stats1 = await settled_statistics(client, model, done["success"] + done["fail"] + run["issued"])
    breakdown = h.statistics_delta(stats0, stats1, PATHS[target.name])
    if scraped is not None:
        after = await asyncio.to_thread(scrape, server.metrics_url)
        breakdown[STAGES_KEY] = stage_means(scraped, after)
    s, n, secs = h.summary(run["latencies"]), len(run["latencies"]), max(run["seconds"], 1e-9)
    server_cpu = sum(cpu1.values()) - sum(cpu0.values())
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
    import tritonclient.grpc.aio as grpc_aio

    client, points = grpc_aio.InferenceServerClient(server.grpc_url), []
    try:
        width = max(config.rcnn_instances, config.bls_instances, config.stages)
        for t in targets:
            def send(k, worker, model=TARGETS[t.name], inputs=t.inputs):
                return client.infer(model, inputs[k % len(inputs)], client_timeout=args.timeout)

            warm = await h.closed_loop(send, width, args.warmup * len(t.inputs) * width,
                                       args.max_seconds * 2)
            if warm["errors"]:
                raise RuntimeError(f"warm-up of {t.name} failed: {warm['errors']}")
        for i, c in enumerate(args.concurrency):
            compute_ms = compute()["mean_ms"] if compute is not None else float("nan")
            for t in targets[i % len(targets):] + targets[:i % len(targets)]:  # order rotated
                p = await measure_point(server, client, config, t, c, args, first=i)
                p.compute_ms = compute_ms
                if compute is not None and c == 1 and t.name != "bare":
                    p.paired_c1 = await paired_latency(client, p.model, t.inputs, compute, args)
                points.append(p)
                print(f"  {config.label} | {t.name:<8} c={c}: {p.throughput:.2f} img/s, p50 "
                      f"{h.fmt(p.p50_ms)} ms, p99 {h.fmt(p.p99_ms)} ms, {p.answered} answered, "
                      f"{p.errors} errors, load {p.loadavg_1m:.2f}", file=sys.stderr, flush=True)
    finally:
        await client.close()
    return points


class InProcessCompute:
    """pipeline_bls's own work per image here, one thread: prepare and finish around the
    stand-in's outputs. Called: medians of ``repeats`` per image, ms, and "rate" (img/s)."""

    def __init__(self, images: list, meta, detections: int, repeats: int):
        import cv2

        from bls.backend.process import keep_freed_memory
        from bls.contract.parameters import RequestOptions

        cv2.setNumThreads(1)
        keep_freed_memory()  # as the served models do
        self.images, self.meta, self.repeats, self.detections = images, meta, repeats, detections
        self.options = RequestOptions(meta.score_threshold)

    def one(self, k: int) -> tuple[float, float]:
        """(prepare ms, finish ms) of image k (cycling), once."""
        from benchmarks.standin import standin_outputs
        from bls.pipeline.steps import finish, prepare

        t_prepare, prepared = h.timed(prepare, self.images[k % len(self.images)].data, self.meta)
        names = tuple(s.name for s in self.meta.outputs)
        outputs = standin_outputs(names, self.detections, self.meta.mask_resolution,
                                  *prepared.model_input.shape[1:])
        t_finish, _ = h.timed(finish, outputs, prepared.original_size, self.meta, self.options)
        return t_prepare * 1000, t_finish * 1000

    def __call__(self) -> dict:
        per_image = {}
        for k, image in enumerate(self.images):
            runs = np.array([self.one(k) for _ in range(self.repeats + 1)][1:])
            per_image[image.name] = {"prepare_ms": float(np.median(runs[:, 0])),
                                     "finish_ms": float(np.median(runs[:, 1])),
                                     "total_ms": float(np.median(runs.sum(axis=1)))}
        mean_ms = float(np.mean([r["total_ms"] for r in per_image.values()]))
        return {"per_image": per_image, "mean_ms": mean_ms, "rate": 1000 / mean_ms,
                "repeats": self.repeats}


async def paired_latency(client, model: str, inputs: list, compute: InProcessCompute, args):
    """Concurrency 1, paired: per iteration the in-process compute, then the served request;
    medians of served, compute and their difference (the machine's drift hits both alike)."""
    rows = []
    for k in range(min(args.requests, 100)):
        work = sum(compute.one(k))
        seconds, _ = await h.timed_async(
            client.infer(model, inputs[k % len(inputs)], client_timeout=args.timeout))
        rows.append((seconds * 1000, work))
    served, work = np.array(rows).T
    return {"pairs": len(rows), "served_ms": float(np.median(served)),
            "compute_ms": float(np.median(work)), "over_ms": float(np.median(served - work))}


def ideal_throughput(config: SweepConfig, concurrency: int, cores: int, rate: float) -> float:
    """min(concurrency, cores) x the in-process rate, at most stand-in instances / latency."""
    ideal = min(concurrency, cores) * rate
    if config.standin_ms:
        return min(ideal, config.rcnn_instances * 1000 / config.standin_ms)
    return ideal


def print_efficiency(points: list, configs: list, cores: int, compute: dict) -> dict:
    print(f"\n== In process, one thread: prepare + finish per image, median of "
          f"{compute['repeats']}, ms")
    print(h.table(["image", "prepare", "finish", "sum"], [
        [name, *(h.fmt(r[k], 1) for k in ("prepare_ms", "finish_ms", "total_ms"))]
        for name, r in compute["per_image"].items()]))
    print(f"  mean {compute['mean_ms']:.1f} ms/img: {compute['rate']:.1f} img/s on one core")
    print("\n== Efficiency: throughput / ideal, ideal = min(concurrency, cores) x in-process rate"
          "\n   over = latency - (compute + stand-in latency), paired at concurrency 1")
    rows, report, top = [], [], max(p.concurrency for p in points)
    by_label = {c.label: c for c in configs}
    for p in (p for p in points if p.target != "bare"):
        config = by_label[p.config]
        compute_ms = p.compute_ms if p.compute_ms == p.compute_ms else compute["mean_ms"]
        ideal = ideal_throughput(config, p.concurrency, cores, 1000 / compute_ms)
        over = p.paired_c1["over_ms"] if p.paired_c1 else p.mean_ms - compute_ms
        over -= config.standin_ms or 0
        item = {"config": p.config, "target": p.target, "concurrency": p.concurrency,
                "throughput": p.throughput, "ideal": ideal, "compute_ms": compute_ms,
                "efficiency": p.throughput / ideal, "over_compute_ms": over}
        verdicts, instant = [], p.target == "bls" and config.standin_ms == 0
        if instant and p.concurrency == 1:
            item["latency_target_met"] = over <= 5.0
            verdicts.append(f"c1 latency <= compute + 5 ms: {h.verdict(over <= 5.0)}")
        if instant and p.concurrency == top >= cores:
            item["throughput_target_met"] = item["efficiency"] >= 0.85
            verdicts.append(f"c{top} >= 85 % of cores x rate: "
                            f"{h.verdict(item['efficiency'] >= 0.85)}")
        report.append(item)
        rows.append([p.config, p.target, p.concurrency, h.fmt(p.throughput, 1),
                     h.fmt(compute_ms, 1), h.fmt(ideal, 1), f"{item['efficiency']:.0%}",
                     f"{over:+.1f}", "; ".join(verdicts)])
    print(h.table(["configuration", "target", "conc", "img/s", "compute ms", "ideal",
                   "efficiency", "over", "targets (instant model)"], rows, left=2))
    print(f"\n  CPU ms per image by process at concurrency {top}:")
    for p in (q for q in points if q.concurrency == top and q.target != "bare"):
        print(f"  - {p.config}, {p.target}: " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(p.cpu_ms_per_image.items(), key=lambda kv: -kv[1])
            if v >= 0.05))
    return {"in_process": compute, "efficiency": report}


def recommend_per_instance(points: list, configs: list, budget_ms) -> list[dict]:
    """Per stand-in latency: pipeline_bls instances and worker_threads per mask_rcnn instance."""
    out = []
    print("\n== Per mask_rcnn instance (best pipeline_bls throughput, no errors, within budget)")
    for latency in dict.fromkeys(c.standin_ms for c in configs):
        labels = {c.label: c for c in configs if c.standin_ms == latency}
        best, reason = recommend([p for p in points if p.config in labels], budget_ms)
        if best is None:
            out.append({"standin_ms": latency, "note": reason})
            print(f"  stand-in {latency:g} ms: none: {reason}")
            continue
        c = labels[best.config]
        workers = c.worker_threads or PIPELINE_PARAMETERS.read({})["worker_threads"]
        out.append({"standin_ms": latency, "config": c.label, "throughput": best.throughput,
                    "p99_ms": best.p99_ms, "concurrency": best.concurrency,
                    "worker_threads": workers,
                    "bls_instances_per_model_instance": c.bls_instances / c.rcnn_instances})
        print(f"  model latency {latency:g} ms: {c.bls_instances / c.rcnn_instances:g} "
              f"pipeline_bls instance(s) x {workers} worker thread(s) per mask_rcnn instance "
              f"({best.throughput:.1f} img/s at concurrency {best.concurrency})")
    print("  apply: python -m export tune --repository REPO --model pipeline_bls --from-sweep "
          "SWEEP_JSON --model-latency-ms MS")
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


def path_times(point: Point) -> dict[str, float]:
    """Per image, server side, ms: entry queue, Python stages, mask_rcnn queue and compute
    (bls's from its own metrics: Triton's statistics end when its execute returns)."""
    b = point.breakdown
    rcnn = b.get(MODEL_NAME, {"queue_ms": 0.0, "compute_ms": 0.0})
    out = {"rcnn_queue": rcnn["queue_ms"], "rcnn_compute": rcnn["compute_ms"], "batch": 0.0,
           "python": 0.0, "entry_queue": 0.0}
    if point.target == "bls":
        bls, stages = b[PIPELINE_NAME], b.get(STAGES_KEY, {})
        out |= {"python": stages.get("prepare_ms", 0.0) + stages.get("finish_ms", 0.0),
                "batch": bls["batch"], "entry_queue": bls["queue_ms"] + bls["compute_ms"]}
        return out | {"server": out["entry_queue"] + stages.get("total_ms", 0.0)}
    if point.target == "ensemble":
        pre, post = b[PREPROCESS_NAME], b[POSTPROCESS_NAME]
        out |= {"python": pre["compute_ms"] + post["compute_ms"],
                "entry_queue": pre["queue_ms"] + post["queue_ms"]}
    keys = ("rcnn_queue", "rcnn_compute", "python", "entry_queue")
    return out | {"server": sum(out[k] for k in keys)}


def print_results(points: list, configs: list, args) -> dict:
    print("\n== Sweep: closed-loop gRPC (asyncio); throughput = answered / wall time")
    print(h.table(["configuration", "target", "conc", "n", "err", "img/s", "p50 ms", "p90 ms",
                   "p99 ms", "srv CPU ms/img", "srv cores", "load"], [
        [p.config, p.target, p.concurrency, p.answered, p.errors, h.fmt(p.throughput, 2),
         h.fmt(p.p50_ms), h.fmt(p.p90_ms), h.fmt(p.p99_ms), h.fmt(p.server_cpu_ms_per_image),
         h.fmt(p.server_cpu_util, 2), h.fmt(p.loadavg_1m, 2)] for p in points], left=2))
    by_key = {(p.config, p.target, p.concurrency): p for p in points}
    keys, comparison = [(c.label, n) for c in configs for n in args.concurrency], []
    if {"bls", "ensemble"} <= {p.target for p in points}:
        print("\n== pipeline_bls vs ensemble (infer_pipeline), img/s (target: pipeline_bls >= "
              "ensemble; ~: a miss within ±3 %, noise)")
        rows = []
        for label, c in keys:
            bls, ens, bare = (by_key.get((label, t, c)) for t in TARGETS)
            if bls and ens:
                ratio = bls.throughput / ens.throughput if ens.throughput else float("nan")
                comparison.append({"config": label, "concurrency": c, "bls": bls.throughput,
                                   "ensemble": ens.throughput, "ratio": ratio,
                                   "bare": bare.throughput if bare else None,
                                   "bls_ge_ensemble": ratio >= 1})
                verdict = "PASS" if ratio >= 1 else "~" if abs(ratio - 1) < 0.03 else "MISS"
                rows.append([label, c, h.fmt(bls.throughput, 2), h.fmt(ens.throughput, 2),
                             h.fmt(bare.throughput, 2) if bare else "", f"{ratio - 1:+.1%}",
                             verdict])
        print(h.table(["configuration", "conc", "bls img/s", "ensemble img/s", "bare img/s",
                       "bls vs ens", ""], rows))
        print("\n  where the time goes, per image, server side, ms (docs/benchmarks.md)")
        rows = []
        for (label, c), t in ((k, t) for k in keys for t in TARGETS):
            if (label, t, c) in by_key:
                p = by_key[label, t, c]
                pt = path_times(p)
                rows.append([label, c, t, *(h.fmt(pt[k]) for k in (
                    "entry_queue", "python", "rcnn_queue", "rcnn_compute", "server")),
                    h.fmt(p.p50_ms), h.fmt(pt["batch"], 2) if t == "bls" else ""])
        print(h.table(["configuration", "conc", "target", "entry queue", "python", "rcnn queue",
                       "rcnn compute", "server sum", "client p50", "bls batch"], rows))
    budget = args.latency_budget_ms
    best, reason = recommend(points, budget)
    print(f"\n== Recommendation (p99 <= {h.fmt(budget)} ms, no errors): best pipeline_bls "
          f"throughput")
    if best is None:
        print(f"  none: {reason}")
        return {"comparison": comparison, "recommendation": None, "recommendation_note": reason}
    config = next(c for c in configs if c.label == best.config)
    commands = config.tune_commands(str(args.repository) if args.repository else "REPO")
    print(f"  {best.config} at concurrency {best.concurrency}: {best.throughput:.2f} img/s, "
          f"p50 {best.p50_ms:.0f} ms, p99 {best.p99_ms:.0f} ms\n  apply it to a repository:\n"
          + "\n".join(f"    {line}" for line in commands))
    return {"comparison": comparison, "recommendation_note": reason, "recommendation": {
        "config": best.config, "spec": best.spec, "concurrency": best.concurrency,
        "throughput": best.throughput, "p99_ms": best.p99_ms, "tune_commands": commands}}


def plot(points: list, configs: list, path: Path, budget_ms) -> None:
    """Throughput and p99 against concurrency: colour = configuration, line style = target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for i, config in enumerate(configs):
        for t, style in zip(TARGETS, ("-o", "--s", ":^")):
            pts = sorted((p for p in points if p.config == config.label and p.target == t),
                         key=lambda p: p.concurrency)
            for ax, key in zip(axes, ("throughput", "p99_ms")):
                ax.plot([p.concurrency for p in pts], [getattr(p, key) for p in pts], style,
                        color=f"C{i % 10}", label=f"{t}: {config.label}")
    for ax, label in zip(axes, ("throughput (images/s)", "p99 latency (ms)")):
        ax.set(xscale="log", xlabel="concurrency", ylabel=label)
        ax.grid(True, alpha=0.3)
    if budget_ms is not None:
        axes[1].axhline(budget_ms, color="red", alpha=0.5, label="latency budget")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    p = h.parser("benchmarks.sweep", __doc__, "repository", "size", "image", "generated")

    def numbers(text: str) -> tuple[float, ...]:
        return tuple(float(v) for v in text.split(","))

    add = p.add_argument
    add("--config", action="append", default=[], metavar="MxT[:B][,k=v]",
        help=f"instance configuration (repeatable; default {' '.join(DEFAULT_CONFIGS)})")
    add("--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    add("--targets", type=lambda s: s.split(","), default=list(TARGETS), help="bls,ensemble,bare")
    add("--requests", type=int, default=40, help="requests per point at most (default 40)")
    add("--max-seconds", type=float, default=300, help="seconds per point at most (300)")
    add("--warmup", type=int, default=2, help="warm-up requests per image and instance (2)")
    add("--timeout", type=float, default=h.REQUEST_TIMEOUT_S, help="seconds per request")
    add("--latency-budget-ms", type=float, help="p99 the recommendation must stay within")
    add("--out", type=Path, default=h.ROOT / "build" / "sweep", help="output folder")
    add("--no-plot", action="store_true", help="skip sweep.png")
    add("--stand-in", type=numbers, metavar="MS[,MS...]", help="stand-in mask_rcnn latencies")
    add("--stand-in-detections", type=int, default=20, help="detections per stand-in answer")
    add("--stand-in-mask-resolution", type=int, default=28, help="M of its masks (0: none)")
    add("--compute-repeats", type=int, default=20, help="repetitions of the in-process compute")
    args = h.parse(p, argv)
    if set(args.targets) - set(TARGETS):
        p.error(f"--targets: choose from {', '.join(TARGETS)}")
    try:
        specs = args.config or (STANDIN_CONFIGS if args.stand_in else DEFAULT_CONFIGS)
        configs = [parse_config(c) for c in specs]
    except ValueError as e:
        p.error(f"--config: {e}")
    args.configs = [replace(c, standin_ms=ms) for ms in args.stand_in or [None] for c in configs]
    return args


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
    points, failures, summary, measure = [], {}, {}, None
    sizes = (args.min_size or 800, args.max_size or 1333)
    resolution = args.stand_in_mask_resolution or None
    try:
        if args.stand_in:
            meta = standin.metadata(resolution, *sizes)
            measure = InProcessCompute(images, meta, args.stand_in_detections, args.compute_repeats)
            summary["in_process"] = measure()
        else:
            repo = h.prepare_repository(args, scratch)
            source, meta = repo.path, repo.meta
            print("".join(f"note: {note}\n" for note in repo.notes), end="")
        print(f"model: {meta.source}, resize {meta.min_size}/{meta.max_size}; images: "
              f"{', '.join(i.name for i in images)}")
        bare = [[h.tensor_input(grpcclient, MODEL_INPUT.name, prepare(i.data, meta).model_input)]
                for i in images]
        for index, config in enumerate(args.configs):
            repo = scratch / f"repository-{index}"
            if config.standin_ms is None:  # hard links: tune() writes new files
                shutil.copytree(source, repo, copy_function=os.link,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                standin.make_repository(repo, args.stand_in_detections, resolution, *sizes,
                                        config.standin_ms)
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
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary |= print_results(points, args.configs, args)
    if measure is not None and points:
        summary |= print_efficiency(points, args.configs, machine["usable_cpus"],
                                    summary["in_process"])
        budget = args.latency_budget_ms
        summary["per_model_instance"] = recommend_per_instance(points, args.configs, budget)
    for label, message in failures.items():
        print(f"FAILED configuration {label}: {message.splitlines()[0]}")
    (args.out / "sweep.json").write_text(json.dumps({
        "command": command, "machine": machine, "loadavg_end": os.getloadavg(),
        "model": {"min_size": meta.min_size, "max_size": meta.max_size, "source": meta.source},
        "images": [{"name": i.name, "bytes": len(i.data)} for i in images],
        "configs": [asdict(c) | {"label": c.label} for c in args.configs],
        "concurrency": args.concurrency, "requests": args.requests,
        "latency_budget_ms": args.latency_budget_ms, "points": [asdict(p) for p in points],
        "failures": failures, **summary}, indent=2, default=str))
    if not args.no_plot and points:
        plot(points, args.configs, args.out / "sweep.png", args.latency_budget_ms)
    print(f"written to {args.out}: sweep.json" + ("" if args.no_plot else ", sweep.png"))
    return 1 if failures or not points else 0


if __name__ == "__main__":
    h.run_main(main)
