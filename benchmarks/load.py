"""python -m benchmarks.load: a bounded load and soak run against its own server: exactly
--requests requests to pipeline_bls over gRPC and HTTP at once, each answer checked against the
first of its image+parameters; memory and /dev/shm before (after --warmup) and after. Targets:
0 failures, growth < 5 %; exit 0 whatever the verdicts. Figures and options: docs/load.md."""

import asyncio
import hashlib
import pickle
import sys
import time
from collections import Counter, namedtuple
from dataclasses import astuple
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio

from benchmarks import harness as h
from bls.contract.tensors import MODEL_NAME, MONITORING_NAME, PIPELINE_NAME
from client import statistics
from client.cli import served_model
from client.results import Detections
from export.repository import parameters_override
from server.processes import shm_usage

GROWTH_TARGET = 0.05
DEFAULT_INTRA_OP_THREADS = 1  # 2 threads on 2 busy cores ran 4-8x slower (docs/load.md)
GENERATED = (("scene640x480.jpg", 640, 480, False), ("scene300x400.png", 300, 400, False),
             ("gray320x240.png", 320, 240, True), ("scene800x450.webp", 800, 450, False))
PARAMETER_SETS = ({}, {"score_threshold": 0.0}, {"score_threshold": 0.05, "max_detections": 5},
                  {"score_threshold": 0.0, "mask_format": "none"}, {"max_detections": 0},
                  {"score_threshold": 0.1, "max_detections": 12, "mask_format": "rle"},
                  {"score_threshold": 0.0, "max_detections": 10, "mask_format": "dense"})  # last
PROTOCOLS = ("grpc", "http")
MEMORY = (("server RSS (sum of VmRSS)", "rss", True), ("  anonymous", "anon", False),  # judged?
          ("  shmem", "shmem", False), ("/dev/shm regions, allocated", "shm_allocated", True))
Job = namedtuple("Job", "index image parameters")  # parameters: index into PARAMETER_SETS


def schedule(index: int, n_images: int, n_sets: int, dense_every: int) -> Job:
    """Request ``index`` -> its image and (non-dense) parameter set, every combination in turn;
    every dense_every-th request the dense set (index n_sets), its image cycling too."""
    if dense_every > 0 and index % dense_every == dense_every - 1:
        return Job(index, (index // dense_every) % n_images, n_sets)
    combination = index % (n_images * n_sets)
    return Job(index, combination % n_images, combination // n_images)


def check(references: dict, job: Job, det: Detections) -> str | None:
    """None when each output (dtype, shape, bytes) equals the first answer's of its combination."""
    fp = {name: hashlib.sha256(pickle.dumps(v)).hexdigest()
          for name, v in zip(det.__dataclass_fields__, astuple(det))}
    reference = references.setdefault((job.image, job.parameters), fp)
    differ = [k for k in fp if fp[k] != reference[k]]
    return "mismatch with the first answer: " + ", ".join(differ) if differ else None


def memory_snapshot(server) -> dict:
    """Totals over the server's live processes (bytes), its /dev/shm, the RSS per process."""
    procs = [p for p in server.processes() if "VmRSS" in p]
    fields = {"rss": "VmRSS", "anon": "RssAnon", "shmem": "RssShmem"}
    snap = {key: sum(p.get(field, 0) for p in procs) for key, field in fields.items()}
    snap |= {f"shm_{k}": v for k, v in shm_usage(server.pid).items()}
    return snap | {"rss_by_process": {p["name"]: p["VmRSS"] for p in procs}}


def trend(samples: list[dict], key: str) -> float | None:
    """Least-squares slope of sample[key] per 1000 requests answered, from "before" on."""
    first = next((i for i, s in enumerate(samples) if s["phase"] == "before"), 0)
    done, values = np.asarray([(s["done"], s[key]) for s in samples[first:]], dtype=float).T
    return float(np.polyfit(done, values, 1)[0] * 1000) if len(set(done)) > 2 else None


async def drive(server, images: list[h.Image], args) -> dict:
    """The warm-up and the rest as two closed loops, idle memory readings after each."""
    n_grpc, t0, run = (args.concurrency + 1) // 2, time.perf_counter(), {"done": 0, "loops": []}
    grpc = grpc_aio.InferenceServerClient(server.grpc_url)
    http = http_aio.InferenceServerClient(server.http_url, conn_limit=args.concurrency // 2)
    references, samples, run["stats"] = {}, [], {}

    async def snapshot(phase: str) -> dict:
        s = await asyncio.to_thread(memory_snapshot, server)
        samples.append(s | {"phase": phase, "done": run["done"], "at_s": time.perf_counter() - t0})
        reply = await grpc.get_inference_statistics(as_json=True)
        run["stats"][phase] = statistics.per_model(reply)
        return samples[-1]

    async def send(k: int, worker: int) -> None:
        client, module = (grpc, grpc_aio) if worker < n_grpc else (http, http_aio)
        job = schedule(k, len(images), len(PARAMETER_SETS) - 1, args.dense_every)
        params = PARAMETER_SETS[job.parameters] or None
        inputs = [h.make_input(module, images[job.image].data, batch)]
        try:
            call = client.infer(PIPELINE_NAME, inputs, parameters=params)
            result = await asyncio.wait_for(call, args.request_timeout)  # cancelled after it
        finally:
            run["done"] += 1
        problem = check(references, job, Detections.from_result(result, batch))
        if problem:  # counted by message: the combination named
            raise h.Failed(f"{images[job.image].name}, {params}: {problem}")

    async def sampler() -> None:
        while True:
            await asyncio.sleep(args.sample_every)
            snap = await snapshot("load")
            print(f"  {run['done']} answered, RSS {h.fmt_bytes(snap['rss'])}", file=sys.stderr)

    warmup = args.warmup if args.warmup < args.requests else 0
    sampling = asyncio.create_task(sampler())
    try:
        batch = (await served_model(grpc, "grpc", PIPELINE_NAME)).batched
        await snapshot("start")
        if warmup:
            run["loops"] = [await h.closed_loop(send, args.concurrency, warmup, args.max_seconds)]
            await asyncio.sleep(args.settle)
            run["before"] = await snapshot("before")
        left, warm_end = t0 + args.max_seconds - time.perf_counter(), time.perf_counter()
        rest = args.requests - warmup
        run["loops"].append(await h.closed_loop(send, args.concurrency, rest, left, warmup))
        run["wall"], run["measured"] = time.perf_counter() - t0, time.perf_counter() - warm_end
        await asyncio.sleep(args.settle)
        run["after"] = await snapshot("after")
    finally:
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        await grpc.close()
        await http.close()
    return run | {"samples": samples, "combinations_checked": len(references)}


def summarise(run: dict, args) -> dict:
    """Requests, latency and errors by protocol, memory growth and trend, verdicts."""
    n_grpc, before, after = (args.concurrency + 1) // 2, run.get("before"), run["after"]
    latencies, errors = {p: [] for p in PROTOCOLS}, {p: Counter() for p in PROTOCOLS}
    for loop in run["loops"]:
        for worker, (seconds, errs) in enumerate(zip(loop["by_worker"], loop["worker_errors"])):
            latencies[PROTOCOLS[worker >= n_grpc]] += seconds
            errors[PROTOCOLS[worker >= n_grpc]] += errs
    latency = {"all": h.summary(latencies["grpc"] + latencies["http"])} | {
        p: {"ok": len(latencies[p]), "failed": sum(errors[p].values()),
            "errors": dict(errors[p].most_common())} | h.summary(latencies[p]) for p in PROTOCOLS}
    ok, failed = (sum(latency[p][k] for p in PROTOCOLS) for k in ("ok", "failed"))
    sent, warmup = sum(loop["issued"] for loop in run["loops"]), min(args.warmup, args.requests)
    memory = {name.strip(): {
        "before": before[key], "after": after[key], "judged": judged,
        "max": max(s[key] for s in run["samples"] if s["phase"] != "start"),
        "growth": after[key] / before[key] - 1 if before[key] else float("nan"),
        "trend_per_1000": trend(run["samples"], key)} for name, key, judged in MEMORY if before}
    verdicts = {"failures": failed == 0 and ok == args.requests} | {
        name: m["growth"] < GROWTH_TARGET for name, m in memory.items() if m["judged"]}
    phase = "before" if before else "start"
    models = [m for m in (PIPELINE_NAME, MODEL_NAME, MONITORING_NAME) if m in run["stats"]["after"]]
    stopped = sent < args.requests  # by --max-seconds
    return {"requests": {"planned": args.requests, "sent": sent, "answered_ok": ok,
                         "failed": failed, "warmup": warmup, "stopped_by_max_seconds": stopped},
            "concurrency": {"grpc": n_grpc, "http": args.concurrency // 2},
            "combinations_checked": run["combinations_checked"], "wall_s": run["wall"],
            "throughput_rps": (ok + failed) / run["wall"],
            "throughput_after_warmup_rps": (ok + failed - warmup * bool(before)) / run["measured"],
            "latency": latency, "memory": memory, "verdicts": verdicts, "samples": run["samples"],
            "processes_rss": {name: {"before": before["rss_by_process"].get(name, 0), "after": rss}
                              for name, rss in after["rss_by_process"].items()} if before else {},
            "server_timing": {"from": phase, "models": statistics.delta(
                run["stats"][phase], run["stats"]["after"], models)}}


def print_report(r: dict) -> None:
    q, lat, c = r["requests"], r["latency"], r["concurrency"]
    print(f"\n== Load: {q['sent']} of {q['planned']} requests sent, {c['grpc']} gRPC + {c['http']} "
          f"HTTP in flight: {q['answered_ok']} answered, {q['failed']} failed, "
          f"{r['combinations_checked']} image+parameter combinations checked; {r['wall_s']:.0f} s, "
          f"{r['throughput_rps']:.2f} req/s, {r['throughput_after_warmup_rps']:.2f} after warm-up")
    print(h.table(["protocol", "ok", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms"], [
        [p, lat[p].get("ok", ""), lat[p].get("failed", "")]
        + [h.fmt(lat[p][f"{k}_ms"]) for k in ("p50", "p90", "p99", "max")] for p in lat]))
    for p, errors in ((p, lat[p]["errors"]) for p in PROTOCOLS):
        print("".join(f"  failed {n}x over {p}: {e}\n" for e, n in errors.items()), end="")
    if r["memory"]:
        print("  memory: before = after the warm-up, after = at the end, both idle\n" + h.table(
            ["measure", "before", "after", "max", "growth", "trend per 1000", "goal", ""], [
                [name, *map(h.fmt_bytes, (m["before"], m["after"], m["max"])),
                 f"{m['growth']:+.2%}", h.fmt_bytes(m["trend_per_1000"] or 0),
                 f"< {GROWTH_TARGET:.0%}" if m["judged"] else "(info)",
                 h.verdict(r["verdicts"][name]) if m["judged"] else ""]
                for name, m in r["memory"].items()]))
    print(f"  failures: {q['failed']} (goal 0) {h.verdict(r['verdicts']['failures'])}\n"
          f"  /dev/shm after the server stopped: {r['shm_left_after_stop']['files']} region files "
          f"left\ngoals: {sum(r['verdicts'].values())}/{len(r['verdicts'])} PASS")


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.load", __doc__, "image", "repository", "json")
    for flag, default in (("--requests", 10_000), ("--concurrency", 8), ("--warmup", 500),
                          ("--max-seconds", 3600.0), ("--dense-every", 50), ("--min-size", 128),
                          ("--max-size", 213), ("--proposals", 50), ("--detections", 3),
                          ("--intra-op-threads", DEFAULT_INTRA_OP_THREADS), ("--sample-every", 5.0),
                          ("--settle", 2.0), ("--request-timeout", 300.0)):
        p.add_argument(flag, type=type(default), default=default, help=f"default {default}")
    args = h.parse(p, argv, (lambda a: a.concurrency < 2, "--concurrency: 2 at least"))
    threads = parameters_override(intra_op_threads=args.intra_op_threads)
    export = ["--proposals", str(args.proposals), "--detections", str(args.detections),
              "--set", f"{MODEL_NAME}={threads}"]
    with h.session("benchmarks.load", argv, args, export) as run:
        images = [h.Image(f"{name} (generated)", h.scene(w, hh, 10 + i, Path(name).suffix, gray))
                  for i, (name, w, hh, gray) in enumerate(GENERATED)] + h.images(args.image, (), ())
        with h.serve(run.repo.path, run.scratch / "triton.log") as server:
            report = summarise(asyncio.run(drive(server, images, args)), args)
    report |= {"command": run.command, "machine": run.machine, "images": [i.name for i in images],
               "server_pid": server.pid, "shm_left_after_stop": shm_usage(server.pid)}
    print_report(report)
    h.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    h.run_main(main)
