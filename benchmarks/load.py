"""python -m benchmarks.load: a bounded load and soak run against its own server: exactly --requests
requests to pipeline_bls, half of --concurrency over gRPC and half over HTTP, every answer checked
against the first of its image+parameters; memory and /dev/shm before (after --warmup) and after.
Targets: 0 failures, growth < 5 %; exit 0 whatever the verdicts. Figures and options: docs/load.md.

  python -m benchmarks.load --requests 10000 --concurrency 8 --image photo.jpg --json build/load/load.json
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import sys
import time
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from benchmarks import harness as h
from bls.contract.tensors import MODEL_NAME, MONITORING_NAME, PIPELINE_NAME

FAILURES_TARGET, GROWTH_TARGET = 0, 0.05
DEFAULT_INTRA_OP_THREADS = 1  # 2 threads on 2 busy cores ran 4-8x slower (docs/load.md)
GENERATED = (("scene640x480.jpg", 640, 480, ".jpg", False), ("scene300x400.png", 300, 400, ".png", False),
             ("gray320x240.png", 320, 240, ".png", True), ("scene800x450.webp", 800, 450, ".webp", False))
PARAMETER_SETS = ({}, {"score_threshold": 0.0}, {"score_threshold": 0.05, "max_detections": 5},
                  {"score_threshold": 0.0, "mask_format": "none"},
                  {"score_threshold": 0.1, "max_detections": 12, "mask_format": "rle"}, {"max_detections": 0})
DENSE_PARAMETERS = {"score_threshold": 0.0, "max_detections": 10, "mask_format": "dense"}
PROTOCOLS = ("grpc", "http")
MEMORY_MEASURES = (  # name, key, in the verdict
    ("server RSS (sum of VmRSS)", lambda s: s["memory"]["rss"], True),
    ("  of which anonymous", lambda s: s["memory"]["anon"], False),
    ("  of which shmem", lambda s: s["memory"]["shmem"], False),
    ("server PSS (shared pages once)", lambda s: s["memory"]["pss"], False),
    ("/dev/shm regions, allocated", lambda s: s["shm"]["allocated"], True),
    ("/dev/shm regions, apparent size", lambda s: s["shm"]["apparent"], False),
    ("df /dev/shm used (machine-wide)", lambda s: s["shm"]["df_used"], False))

@dataclass(frozen=True)
class Job:
    index: int
    image: int
    parameters: int  # index into the run's parameter sets (the dense set last)

def schedule(index: int, n_images: int, n_sets: int, dense_every: int) -> Job:
    """Request ``index`` -> its image and parameter set: every combination in turn, every
    dense_every-th request a dense one (its image cycling too)."""
    if dense_every > 0 and index % dense_every == dense_every - 1:
        return Job(index, (index // dense_every) % n_images, n_sets)
    return Job(index, index % (n_images * n_sets) % n_images, index % (n_images * n_sets) // n_images)

def fingerprint(det) -> dict[str, str]:
    """A digest per output of an answer (client.results.Detections): dtype, shape and bytes."""
    return {name: hashlib.sha256(pickle.dumps(v)).hexdigest()[:16] for name, v in zip(det.__dataclass_fields__,
                                                                                     astuple(det))}

def check(references: dict, job: Job, det) -> str | None:
    """None when the answer equals the first of its combination (or is that first)."""
    fp = fingerprint(det)
    reference = references.setdefault((job.image, job.parameters), fp)
    differ = [k for k in fp if fp[k] != reference[k]]
    return "mismatch with the first answer: " + ", ".join(differ) if differ else None

def memory_snapshot(server) -> dict:
    """RSS (anon, file, shmem) and PSS of each live process of the server, with totals; its /dev/shm
    regions (triton_bls_<pgid>_*): files, apparent and allocated bytes; df's used bytes (machine-wide)."""
    procs = [{"pid": p["pid"], "name": p["name"]} | {k: p.get(f, 0) for k, f in (
        ("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"), ("shmem", "RssShmem"), ("pss", "Pss"))}
        for p in h.processes(server) if "VmRSS" in p]
    return {"time": time.time(), "shm": shm_usage(server.pid), "memory": {"processes": procs} | {
        k: sum(p[k] for p in procs) for k in ("rss", "anon", "file", "shmem", "pss")}}

def shm_usage(pgid: int) -> dict:
    files, vfs = [p.stat() for p in Path("/dev/shm").glob(f"triton_bls_{pgid}_*")], os.statvfs("/dev/shm")
    return {"files": len(files), "apparent": sum(s.st_size for s in files),
            "allocated": sum(s.st_blocks * 512 for s in files), "df_used": (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize}

def trend(samples: list[dict], key) -> float | None:
    """Least-squares slope of key(sample) per 1000 requests answered, from "before" on."""
    first = next((i for i, s in enumerate(samples) if s["phase"] == "before"), 0)
    points = np.asarray([(s["done"], key(s)) for s in samples[first:]], dtype=float)
    return float(np.polyfit(*points.T, 1)[0] * 1000) if len(points) >= 3 and len(set(points[:, 0])) > 1 else None

async def run(server, images: list[h.Image], sets: list[dict], args) -> dict:
    """The warm-up and the rest as two closed loops, idle memory readings around the second."""
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    from client.cli import served_model
    from client.results import Detections

    n_grpc, t0 = (args.concurrency + 1) // 2, time.perf_counter()
    grpc = grpc_aio.InferenceServerClient(server.grpc_url)
    http = http_aio.InferenceServerClient(server.http_url, conn_limit=max(args.concurrency // 2, 1),
                                          conn_timeout=args.request_timeout)
    clients = {"grpc": (grpc, grpc_aio), "http": (http, http_aio)}
    state = {"done": 0, "references": {}, "mismatches": [], "samples": [], "stats": {}, "loops": []}

    async def snapshot(phase: str) -> dict:
        snap = await asyncio.to_thread(memory_snapshot, server)
        state["samples"].append(snap := snap | {"phase": phase, "done": state["done"],
                                                "elapsed_s": time.perf_counter() - t0})
        state["stats"][phase] = h.model_statistics(await grpc.get_inference_statistics())
        return snap

    async def send(k: int, worker: int) -> None:
        protocol = PROTOCOLS[worker >= n_grpc]
        (client, module), job = clients[protocol], schedule(k, len(images), len(sets) - 1, args.dense_every)
        params, batch = sets[job.parameters] or None, served[protocol].batched
        call = client.infer(PIPELINE_NAME, [h.make_input(module, images[job.image].data, batch)], parameters=params,
                            **({"client_timeout": args.request_timeout} if protocol == "grpc" else {}))
        try:
            problem = check(state["references"], job, Detections.from_result(
                await asyncio.wait_for(call, args.request_timeout), batch))
        finally:
            state["done"] += 1
        if problem:
            state["mismatches"] += [f"request {k} ({protocol}): image {images[job.image].name}, parameters "
                                    f"{sets[job.parameters]}: {problem}"][:20 - len(state["mismatches"])]
            raise h.Failed(problem)

    async def sampler() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(args.sample_every)
            snap = await snapshot("load")
            if time.monotonic() - last >= args.progress_every:
                last = time.monotonic()
                print(f"  {state['done']}/{args.requests} answered, {state['done'] / snap['elapsed_s']:.1f} req/s; server "
                      f"RSS {h.fmt_bytes(snap['memory']['rss'])}, /dev/shm regions "
                      f"{h.fmt_bytes(snap['shm']['allocated'])}", file=sys.stderr, flush=True)

    task, warm = None, 0 < args.warmup < args.requests
    try:
        served = {p: await served_model(c, p, PIPELINE_NAME) for p, (c, _) in clients.items()}
        state["server_config"] = h.describe({m: (await grpc.get_model_config(m, as_json=True))["config"]
                                             for m in (MODEL_NAME, PIPELINE_NAME)})
        await snapshot("start")
        t0 = time.perf_counter()
        task = asyncio.create_task(sampler())
        if warm:
            state["loops"].append(await h.closed_loop(send, args.concurrency, args.warmup, args.max_seconds))
            await asyncio.sleep(args.settle)
            state["before"], state["warm_end"] = await snapshot("before"), time.perf_counter()
        state["loops"].append(await h.closed_loop(send, args.concurrency, args.requests - args.warmup * warm,
                                                  t0 + args.max_seconds - time.perf_counter(), args.warmup * warm))
        state["wall"], state["measured"] = time.perf_counter() - t0, time.perf_counter() - state.get("warm_end", t0)
        await asyncio.sleep(args.settle)
        state["after"] = await snapshot("after")
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await grpc.close()
        await http.close()
    return state

def summarise(r: dict, images: list[h.Image], sets: list[dict], repo, args) -> dict:
    n_grpc, before = (args.concurrency + 1) // 2, r.get("before")
    lat, errors = {p: [] for p in PROTOCOLS}, {p: Counter() for p in PROTOCOLS}
    for loop in r["loops"]:
        for w, (ws, err) in enumerate(zip(loop["by_worker"], loop["worker_errors"])):
            lat[PROTOCOLS[w >= n_grpc]] += ws
            errors[PROTOCOLS[w >= n_grpc]] += err
    latency = {"all": h.summary(lat["grpc"] + lat["http"])} | {p: {"ok": len(lat[p]), "failed": sum(
        errors[p].values())} | h.summary(lat[p]) | {"errors": dict(errors[p].most_common())} for p in PROTOCOLS}
    ok, failed = (sum(latency[p][k] for p in PROTOCOLS) for k in ("ok", "failed"))
    sent = sum(loop["issued"] for loop in r["loops"])
    memory = {name.strip(): {"before": key(before), "after": key(r["after"]), "judged": judged,
                             "max": max(key(x) for x in r["samples"] if x["phase"] != "start"),
                             "growth": key(r["after"]) / key(before) - 1 if key(before) else None,
                             "trend_per_1000": trend(r["samples"], key)}
              for name, key, judged in MEMORY_MEASURES if before is not None}
    processes = {}
    for phase in ("before", "after") if before is not None else ():
        for proc in r[phase]["memory"]["processes"]:
            processes.setdefault(proc["name"], {})[phase] = proc["rss"]
    timing_from = "before" if before is not None else "start"
    verdicts = {"failures": failed == FAILURES_TARGET and ok + failed == args.requests} | {
        n: m["growth"] is not None and m["growth"] < GROWTH_TARGET for n, m in memory.items() if m["judged"]}
    return {"repository": str(repo.path), "exported": repo.exported, "export_s": repo.export_s,
            "model": {k: getattr(repo.meta, k) for k in ("min_size", "max_size", "source", "weights")},
            "requests": {"planned": args.requests, "sent": sent, "answered_ok": ok, "failed": failed,
                         "warmup": min(args.warmup, args.requests), "stopped_by_max_seconds": sent < args.requests},
            "concurrency": {"grpc": n_grpc, "http": args.concurrency // 2},
            "images": [{"name": i.name, "bytes": len(i.data)} for i in images], "parameter_sets": sets,
            "dense_every": args.dense_every, "combinations_checked": len(r["references"]), "wall_s": r["wall"],
            "throughput_rps": (ok + failed) / r["wall"],
            "throughput_after_warmup_rps": (ok + failed - (args.warmup if before else 0)) / r["measured"],
            "latency": latency, "mismatch_examples": r["mismatches"], "memory": memory, "processes_rss": processes,
            "server_timing": {"from": timing_from, "models": h.statistics_delta(
                r["stats"][timing_from], r["stats"]["after"], [m for m in (PIPELINE_NAME, MODEL_NAME, MONITORING_NAME)
                                                               if m in r["stats"]["after"]])},
            "server_config": r["server_config"], "verdicts": verdicts,
            "samples": [{k: v for k, v in x.items() if k != "memory"} | {k: x["memory"][k] for k in (
                "rss", "pss", "anon")} | {"processes": len(x["memory"]["processes"])} for x in r["samples"]]}

def print_report(report: dict) -> None:
    r, m, lat, sets = report["requests"], report["model"], report["latency"], report["parameter_sets"]
    print(f"\n== Load: {r['planned']} requests to {PIPELINE_NAME}, concurrency {report['concurrency']['grpc']} gRPC + "
          f"{report['concurrency']['http']} HTTP\n  model: {m['source']}, {m['weights'] or 'weights ?'}, resize "
          f"shortest edge {m['min_size']}, longest <= {m['max_size']}; repository {report['repository']}"
          + (f" (exported in {report['export_s']:.0f} s)" if report["exported"] else "")
          + f"\n  server: {report['server_config']}\n  images: "
          + ", ".join(f"{i['name']} {h.fmt_bytes(i['bytes'])}" for i in report["images"])
          + "\n  parameters cycled: " + "; ".join(json.dumps(p) for p in sets[:-1])
          + f"; every {report['dense_every']}th request: {json.dumps(sets[-1])}")
    print(f"  sent {r['sent']}, answered ok {r['answered_ok']}, failed {r['failed']}"
          f"{' (stopped by --max-seconds)' if r['stopped_by_max_seconds'] else ''}; {report['combinations_checked']} "
          f"image+parameter combinations checked against their first answer\n  wall {report['wall_s']:.0f} s; "
          f"throughput {report['throughput_rps']:.2f} req/s ({report['throughput_after_warmup_rps']:.2f} req/s after "
          f"the warm-up)\n")
    print(h.table(["protocol", "ok", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms"], [
        [p, lat[p].get("ok", ""), lat[p].get("failed", ""), *(h.fmt(lat[p][k]) for k in (
            "p50_ms", "p90_ms", "p99_ms", "max_ms"))] for p in ("all", *PROTOCOLS)]))
    timing = report["server_timing"]
    print(f"\n  server side (Triton's statistics, {'after the warm-up' if timing['from'] == 'before' else 'whole run'};"
          f" means per request):\n" + h.table(["model", "requests", "executions", "queue ms", "compute ms", "total ms"], [
              [name, t["requests"], t["executions"], *(h.fmt(t[k]) for k in ("queue_ms", "compute_ms", "total_ms"))]
              for name, t in timing["models"].items()]))
    errors = Counter({f"[{p}] {msg}": n for p in PROTOCOLS for msg, n in lat[p]["errors"].items()})
    print("".join(["\n  failures by message:", *(f"\n    {n:6d}  {msg}" for msg, n in errors.most_common()),
                   *(f"\n    e.g. {x}" for x in report["mismatch_examples"][:5])]) if errors else "", end="")
    if report["memory"]:
        print(f"\n  memory: before = after {r['warmup']} warm-up requests, after = at the end (both idle); max over "
              f"samples under load; trend = slope per 1000 requests after warm-up")
        print(h.table(["measure", "before", "after", "max", "growth", "trend/1000", "goal", ""], [
            [name, *(h.fmt_bytes(v[k]) for k in ("before", "after", "max")),
             "-" if v["growth"] is None else f"{v['growth']:+.2%}", "-" if (t := v["trend_per_1000"]) is None else
             ("+" if t >= 0 else "-") + h.fmt_bytes(abs(t)), f"< {GROWTH_TARGET:.0%}" if v["judged"] else "(info)",
             h.verdict(report["verdicts"][name]) if v["judged"] else ""] for name, v in report["memory"].items()]))
        print("\n  RSS by process:\n" + h.table(["process", "before", "after"], [
            [name, h.fmt_bytes(v.get("before", 0)), h.fmt_bytes(v.get("after", 0))]
            for name, v in sorted(report["processes_rss"].items())]))
    else:
        print("\n  memory: no growth figures (fewer requests than --warmup)")
    print(f"\n  failures: {r['failed']} (goal {FAILURES_TARGET}) {h.verdict(report['verdicts']['failures'])}")

def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.load", __doc__, "repository", "json")
    for flag, default, text in (
            ("--requests", 10_000, "requests in all"), ("--concurrency", 8, "in flight: half gRPC (the odd one), half HTTP"),
            ("--warmup", 500, "requests before the 'before' memory figures"),
            ("--max-seconds", 3600.0, "safety bound: no new request after this"),
            ("--dense-every", 50, "every Nth request asks for dense masks (0: never)"),
            ("--min-size", 128, "export: shortest edge"), ("--max-size", 213, "export: longest edge"),
            ("--proposals", 50, "export: RPN proposals"), ("--detections", 3, "export: detections at most"),
            ("--intra-op-threads", DEFAULT_INTRA_OP_THREADS, "export: mask_rcnn's torch threads (0: torch's default)"),
            ("--sample-every", 5.0, "seconds between memory samples"), ("--progress-every", 30.0, "seconds between "
             "progress lines on stderr"), ("--settle", 2.0, "seconds idle before the before/after memory figures"),
            ("--request-timeout", 300.0, "seconds before a request counts as failed")):
        p.add_argument(flag, type=type(default), default=default, help=f"{text} (default {default})")
    p.add_argument("--image", type=Path, action="append", default=[], help="also send this image (repeatable)")
    args = h.parse(p, argv, (lambda a: a.requests < 1 or a.concurrency < 2,
                             "need --requests >= 1 and --concurrency >= 2 (one per protocol at least)"),
                   (lambda a: a.warmup < 0 or a.dense_every < 0 or a.sample_every <= 0 or a.max_seconds <= 0,
                    "need --warmup >= 0, --dense-every >= 0, --sample-every > 0, --max-seconds > 0"))
    export = ["--proposals", str(args.proposals), "--detections", str(args.detections), "--set", 'mask_rcnn='
              f'parameters {{ key: "intra_op_threads" value {{ string_value: "{args.intra_op_threads}" }} }}']
    with h.session("benchmarks.load", argv, args, export) as session:
        print(f"date: {(started := time.strftime('%Y-%m-%d %H:%M:%S %Z'))}", flush=True)
        images = [h.Image(f"{name} (generated)", h.scene(w, hh, 10 + i, ext, gray))
                  for i, (name, w, hh, ext, gray) in enumerate(GENERATED)] + h.images(args.image, (), ())
        sets = [dict(s) for s in (*PARAMETER_SETS, DENSE_PARAMETERS)]
        with h.serve(session.repo.path, session.scratch / "triton.log") as server:
            print(f"sending {args.requests} requests ({args.warmup} warm-up) ...", flush=True)
            report = summarise(asyncio.run(run(server, images, sets, args)), images, sets, session.repo, args)
            pid = server.pid
        leftover = shm_usage(pid)  # what the stopped server left in /dev/shm
    command, machine = session.command, session.machine
    report = {"command": command, "date": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine,
              "server_pid": pid, **report, "targets": {"failures": FAILURES_TARGET, "growth_lt": GROWTH_TARGET},
              "loadavg_end": os.getloadavg(), "shm_left_after_stop": leftover}
    print_report(report)
    print(f"  /dev/shm after the server stopped: {leftover['files']} of its region file(s) left "
          f"({h.fmt_bytes(leftover['allocated'])} allocated)\n  load average at end: {h.loadavg()}\n"
          f"goals: {sum(report['verdicts'].values())}/{len(report['verdicts'])} PASS")
    h.write_json(args.json, report)
    return 0

if __name__ == "__main__":
    h.run_main(main)
