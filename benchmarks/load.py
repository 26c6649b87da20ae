"""python -m benchmarks.load: a bounded load and soak run against one real server.

  python -m benchmarks.load                                   # 10,000 requests, 8 in flight
  python -m benchmarks.load --requests 10000 --concurrency 8 --min-size 128 --max-size 213 \\
      --image photo.jpg --json build/load/load.json

Exports a cheap model (or serves --repository), starts its own server, sends exactly
--requests requests to pipeline_bls, half of --concurrency over gRPC and half over HTTP
(asyncio), cycling images and request parameters; every answer must equal the first of
its image+parameters combination. The server's memory and /dev/shm regions are read after
--warmup requests and at the end, both idle. Targets: 0 failures, growth < 5 %. Exit 0
whatever the verdicts. Figures and options: docs/load.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from benchmarks import harness as h
from bls.contract import MODEL_NAME, MONITORING_NAME, PIPELINE_NAME

FAILURES_TARGET = 0
GROWTH_TARGET = 0.05  # after / before - 1, less than this
DEFAULT_INTRA_OP_THREADS = 1  # 2 threads on 2 busy cores ran 4-8x slower (docs/load.md)
GENERATED = (("scene640x480.jpg", 480, 640, ".jpg", False),  # (name, height, width, ext, gray)
             ("scene300x400.png", 400, 300, ".png", False),
             ("gray320x240.png", 240, 320, ".png", True),
             ("scene800x450.webp", 450, 800, ".webp", False))
PARAMETER_SETS = ({}, {"score_threshold": 0.0}, {"score_threshold": 0.05, "max_detections": 5},
                  {"score_threshold": 0.0, "mask_format": "none"},
                  {"score_threshold": 0.1, "max_detections": 12, "mask_format": "rle"},
                  {"max_detections": 0})
DENSE_PARAMETERS = {"score_threshold": 0.0, "max_detections": 10, "mask_format": "dense"}
PROTOCOLS = ("grpc", "http")
STAT_MODELS = (PIPELINE_NAME, MODEL_NAME, MONITORING_NAME)


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
    k = index % (n_images * n_sets)
    return Job(index, k % n_images, k // n_images)


def fingerprint(det) -> dict[str, str]:
    """A digest per output of an answer (client.results.Detections): dtype, shape, bytes."""
    return {name: hashlib.sha256(pickle.dumps(v)).hexdigest()[:16]
            for name, v in zip(det.__dataclass_fields__, astuple(det))}


def check(references: dict, job: Job, det) -> str | None:
    """None when the answer equals the first of its combination (or is that first)."""
    fp = fingerprint(det)
    reference = references.setdefault((job.image, job.parameters), fp)
    differ = [k for k in fp if fp[k] != reference[k]]
    return "mismatch with the first answer: " + ", ".join(differ) if differ else None


# --------------------------------------------------------------------------- memory
def _proc(pid: int, name: str, keys: tuple) -> dict[str, int]:
    """'Key:  123 kB' lines of /proc/pid/name -> {key: bytes}."""
    return {k: int(v.split()[0]) * 1024 for k, _, v in
            (line.partition(":") for line in Path(f"/proc/{pid}/{name}").read_text().splitlines())
            if k in keys}


def process_name(pid: int) -> str:
    """tritonserver, run_triton.sh, or 'stub:<model>' for a Python backend stub."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if comm.startswith("triton_python"):
        return "stub:" + next((Path(a).parent.parent.name for a in args
                               if a.endswith("model.py")), "?")
    if comm == "bash" and any(a.endswith("run_triton.sh") for a in args):
        return "run_triton.sh"
    return comm


def memory_snapshot(pgid: int) -> dict:
    """RSS (and its anon, file, shmem parts) and PSS of each live process of the server's
    process group, with totals; its /dev/shm regions (triton_bls_<pid>_*): files,
    apparent and allocated bytes; df's used bytes of /dev/shm (machine-wide)."""
    from client.server import live_members

    procs = []
    for pid in sorted(live_members(pgid)):
        try:
            st = _proc(pid, "status", ("VmRSS", "RssAnon", "RssFile", "RssShmem"))
            pss = _proc(pid, "smaps_rollup", ("Pss",)).get("Pss", 0)
        except (OSError, ValueError, IndexError):
            continue  # it ended while being read
        if "VmRSS" in st:
            procs.append({"pid": pid, "name": process_name(pid), "rss": st["VmRSS"],
                          "anon": st.get("RssAnon", 0), "file": st.get("RssFile", 0),
                          "shmem": st.get("RssShmem", 0), "pss": pss})
    memory = {"processes": procs} | {k: sum(p[k] for p in procs)
                                     for k in ("rss", "anon", "file", "shmem", "pss")}
    return {"time": time.time(), "memory": memory, "shm": shm_usage(pgid)}


def shm_usage(pgid: int) -> dict:
    files = [p.stat() for p in Path("/dev/shm").glob(f"triton_bls_{pgid}_*")]
    vfs = os.statvfs("/dev/shm")
    return {"files": len(files), "apparent": sum(s.st_size for s in files),
            "allocated": sum(s.st_blocks * 512 for s in files),
            "df_used": (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize}


MEMORY_MEASURES = (  # name, key, in the verdict
    ("server RSS (sum of VmRSS)", lambda s: s["memory"]["rss"], True),
    ("  of which anonymous", lambda s: s["memory"]["anon"], False),
    ("  of which shmem", lambda s: s["memory"]["shmem"], False),
    ("server PSS (shared pages once)", lambda s: s["memory"]["pss"], False),
    ("/dev/shm regions, allocated", lambda s: s["shm"]["allocated"], True),
    ("/dev/shm regions, apparent size", lambda s: s["shm"]["apparent"], False),
    ("df /dev/shm used (machine-wide)", lambda s: s["shm"]["df_used"], False))


def trend(samples: list[dict], key) -> float | None:
    """Least-squares slope of key(sample) per 1000 requests answered, from "before" on."""
    first = next((i for i, s in enumerate(samples) if s["phase"] == "before"), 0)
    points = [(s["done"], key(s)) for s in samples[first:]]
    if len(points) < 3 or len({x for x, _ in points}) < 2:
        return None
    x, y = np.asarray(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 1000)


# --------------------------------------------------------------------------- the run
async def run(server, images: list[h.Image], sets: list[dict], args) -> dict:
    """The load, in two closed loops (warm-up, then the rest) with idle memory readings
    around the second and samples under load."""
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    from client.cli import served_model
    from client.results import Detections

    n_grpc = (args.concurrency + 1) // 2
    grpc = grpc_aio.InferenceServerClient(server.grpc_url)
    http = http_aio.InferenceServerClient(server.http_url, conn_limit=max(args.concurrency // 2, 1),
                                          conn_timeout=args.request_timeout)
    clients = {"grpc": (grpc, grpc_aio), "http": (http, http_aio)}
    state = {"done": 0, "references": {}, "mismatches": [], "samples": [], "stats": {}}
    t0 = time.perf_counter()

    async def snapshot(phase: str) -> dict:
        snap = await asyncio.to_thread(memory_snapshot, server.pid)
        snap |= {"phase": phase, "done": state["done"], "elapsed_s": time.perf_counter() - t0}
        state["samples"].append(snap)
        state["stats"][phase] = h.model_statistics(await grpc.get_inference_statistics())
        return snap

    async def send(k: int, worker: int) -> None:
        protocol = "grpc" if worker < n_grpc else "http"
        client, module = clients[protocol]
        job = schedule(k, len(images), len(sets) - 1, args.dense_every)
        params = sets[job.parameters] or None
        tensor = h.make_input(module, images[job.image].data, served[protocol].batched)
        try:
            if protocol == "grpc":
                result = await client.infer(PIPELINE_NAME, [tensor], parameters=params,
                                            client_timeout=args.request_timeout)
            else:
                result = await asyncio.wait_for(client.infer(PIPELINE_NAME, [tensor],
                                                             parameters=params), args.request_timeout)
            problem = check(state["references"], job, Detections.from_result(
                result, served[protocol].batched))
        finally:
            state["done"] += 1
        if problem:
            if len(state["mismatches"]) < 20:
                state["mismatches"].append(f"request {k} ({protocol}): image {images[job.image].name}, "
                                           f"parameters {sets[job.parameters]}: {problem}")
            raise h.Failed(problem)

    async def sampler() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(args.sample_every)
            snap = await snapshot("load")
            if time.monotonic() - last >= args.progress_every:
                last = time.monotonic()
                print(f"  {state['done']}/{args.requests} answered, {state['done'] / max(snap['elapsed_s'], 1e-9):.1f} "
                      f"req/s; server RSS {h.fmt_bytes(snap['memory']['rss'])}, /dev/shm regions "
                      f"{h.fmt_bytes(snap['shm']['allocated'])}", file=sys.stderr, flush=True)

    task = None
    try:
        served = {p: await served_model(c, p, PIPELINE_NAME) for p, (c, _) in clients.items()}
        configs = {m: (await grpc.get_model_config(m, as_json=True))["config"]
                   for m in (MODEL_NAME, PIPELINE_NAME)}
        await snapshot("start")
        t0, warm_end = time.perf_counter(), None
        task = asyncio.create_task(sampler())
        loops, deadline = [], t0 + args.max_seconds
        if 0 < args.warmup < args.requests:
            loops.append(await h.closed_loop(send, args.concurrency, args.warmup, args.max_seconds))
            await asyncio.sleep(args.settle)
            before = await snapshot("before")
            warm_end = time.perf_counter()
        loops.append(await h.closed_loop(send, args.concurrency, args.requests - (
            args.warmup if warm_end else 0), deadline - time.perf_counter(),
            first=args.warmup if warm_end else 0))
        end = time.perf_counter()
        await asyncio.sleep(args.settle)
        after = await snapshot("after")
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await grpc.close()
        await http.close()
    return {"loops": loops, "state": state, "before": before if warm_end else None,
            "after": after, "wall": end - t0, "measured": end - (warm_end or t0),
            "server_config": h.describe(configs)}


def summarise(r: dict, images: list[h.Image], sets: list[dict], repo: h.Repository, args) -> dict:
    state, samples = r["state"], r["state"]["samples"]
    protocols, errors = {p: [] for p in PROTOCOLS}, {p: Counter() for p in PROTOCOLS}
    n_grpc = (args.concurrency + 1) // 2
    for loop in r["loops"]:
        for w, (lat, err) in enumerate(zip(loop["by_worker"], loop["worker_errors"])):
            protocols["grpc" if w < n_grpc else "http"] += lat
            errors["grpc" if w < n_grpc else "http"] += err
    latency = {"all": h.summary([x for v in protocols.values() for x in v])} | {
        p: {"ok": len(v), "failed": sum(errors[p].values())} | h.summary(v)
        | {"errors": dict(errors[p].most_common())} for p, v in protocols.items()}
    ok = sum(latency[p]["ok"] for p in PROTOCOLS)
    failed = sum(latency[p]["failed"] for p in PROTOCOLS)
    sent = sum(loop["issued"] for loop in r["loops"])
    memory, processes = {}, {}
    if r["before"] is not None:
        for name, key, judged in MEMORY_MEASURES:
            b, a = key(r["before"]), key(r["after"])
            memory[name.strip()] = {"before": b, "after": a, "judged": judged,
                                    "max": max(key(x) for x in samples if x["phase"] != "start"),
                                    "growth": a / b - 1 if b else None, "trend_per_1000": trend(samples, key)}
        for phase in ("before", "after"):
            for proc in r[phase]["memory"]["processes"]:
                processes.setdefault(proc["name"], {})[phase] = proc["rss"]
    timing_from = "before" if r["before"] is not None else "start"
    timing = h.statistics_delta(state["stats"][timing_from], state["stats"]["after"],
                                [m for m in STAT_MODELS if m in state["stats"]["after"]])
    verdicts = {"failures": failed == FAILURES_TARGET and ok + failed == args.requests}
    verdicts |= {n: m["growth"] is not None and m["growth"] < GROWTH_TARGET
                 for n, m in memory.items() if m["judged"]}
    return {
        "repository": str(repo.path), "exported": repo.exported, "export_s": repo.export_s,
        "model": {"min_size": repo.meta.min_size, "max_size": repo.meta.max_size,
                  "source": repo.meta.source, "weights": repo.meta.weights},
        "requests": {"planned": args.requests, "sent": sent, "answered_ok": ok, "failed": failed,
                     "warmup": min(args.warmup, args.requests),
                     "stopped_by_max_seconds": sent < args.requests},
        "concurrency": {"grpc": n_grpc, "http": args.concurrency // 2},
        "images": [{"name": i.name, "bytes": len(i.data)} for i in images],
        "parameter_sets": sets, "dense_every": args.dense_every,
        "combinations_checked": len(state["references"]), "wall_s": r["wall"],
        "throughput_rps": (ok + failed) / r["wall"] if r["wall"] > 0 else None,
        "throughput_after_warmup_rps": (ok + failed - (args.warmup if r["before"] else 0))
        / r["measured"] if r["measured"] > 0 else None,
        "latency": latency, "mismatch_examples": state["mismatches"], "memory": memory,
        "processes_rss": processes, "server_timing": {"from": timing_from, "models": timing},
        "server_config": r["server_config"],
        "samples": [{k: v for k, v in x.items() if k != "memory"}
                    | {k: x["memory"][k] for k in ("rss", "pss", "anon")}
                    | {"processes": len(x["memory"]["processes"])} for x in samples],
        "verdicts": verdicts}


def print_report(report: dict) -> None:
    r, m = report["requests"], report["model"]
    print(f"\n== Load: {r['planned']} requests to {PIPELINE_NAME}, concurrency "
          f"{report['concurrency']['grpc']} gRPC + {report['concurrency']['http']} HTTP")
    print(f"  model: {m['source']}, {m['weights'] or 'weights ?'}, resize shortest edge "
          f"{m['min_size']}, longest <= {m['max_size']}; repository {report['repository']}"
          + (f" (exported in {report['export_s']:.0f} s)" if report["exported"] else ""))
    print(f"  server: {report['server_config']}")
    print("  images: " + ", ".join(f"{i['name']} {h.fmt_bytes(i['bytes'])}" for i in report["images"]))
    sets = report["parameter_sets"]
    print("  parameters cycled: " + "; ".join(json.dumps(p) for p in sets[:-1])
          + f"; every {report['dense_every']}th request: {json.dumps(sets[-1])}")
    print(f"  sent {r['sent']}, answered ok {r['answered_ok']}, failed {r['failed']}"
          f"{' (stopped by --max-seconds)' if r['stopped_by_max_seconds'] else ''}; "
          f"{report['combinations_checked']} image+parameter combinations checked against "
          f"their first answer")
    tput, tput_w = report["throughput_rps"], report["throughput_after_warmup_rps"]
    print(f"  wall {report['wall_s']:.0f} s; throughput {tput:.2f} req/s"
          + (f" ({tput_w:.2f} req/s after the warm-up)" if tput_w else ""))
    lat = report["latency"]
    print("\n" + h.table(["protocol", "ok", "failed", "p50 ms", "p90 ms", "p99 ms", "max ms"], [
        [p, lat[p].get("ok", ""), lat[p].get("failed", ""),
         *(h.fmt(lat[p][k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))]
        for p in ("all", *PROTOCOLS)]))
    timing = report["server_timing"]
    if timing["models"]:
        span = "after the warm-up" if timing["from"] == "before" else "whole run"
        print(f"\n  server side (Triton's statistics, {span}; means per request):\n" + h.table(
            ["model", "requests", "executions", "queue ms", "compute ms", "total ms"],
            [[name, t["requests"], t["executions"], *(h.fmt(t[k]) for k in
                                                      ("queue_ms", "compute_ms", "total_ms"))]
             for name, t in timing["models"].items()]))
    errors = Counter({f"[{p}] {msg}": n for p in PROTOCOLS for msg, n in lat[p]["errors"].items()})
    if errors:
        print("\n  failures by message:")
        for message, n in errors.most_common():
            print(f"    {n:6d}  {message}")
        for example in report["mismatch_examples"][:5]:
            print(f"    e.g. {example}")
    if report["memory"]:
        print(f"\n  memory: before = after {r['warmup']} warm-up requests, after = at the end "
              f"(both idle); max over samples under load; trend = slope per 1000 requests "
              f"after warm-up")
        print(h.table(["measure", "before", "after", "max", "growth", "trend/1000", "goal", ""], [
            [name, h.fmt_bytes(v["before"]), h.fmt_bytes(v["after"]), h.fmt_bytes(v["max"]),
             "-" if v["growth"] is None else f"{v['growth']:+.2%}",
             "-" if v["trend_per_1000"] is None else
             ("+" if v["trend_per_1000"] >= 0 else "-") + h.fmt_bytes(abs(v["trend_per_1000"])),
             f"< {GROWTH_TARGET:.0%}" if v["judged"] else "(info)",
             h.verdict(report["verdicts"][name]) if v["judged"] else ""]
            for name, v in report["memory"].items()]))
        print("\n  RSS by process:\n" + h.table(["process", "before", "after"], [
            [name, h.fmt_bytes(v.get("before", 0)), h.fmt_bytes(v.get("after", 0))]
            for name, v in sorted(report["processes_rss"].items())]))
    else:
        print("\n  memory: no growth figures (fewer requests than --warmup)")
    print(f"\n  failures: {r['failed']} (goal {FAILURES_TARGET}) "
          f"{h.verdict(report['verdicts']['failures'])}")


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.load", __doc__, "repository", "json")
    for flag, default, text in (
            ("--requests", 10_000, "requests in all"),
            ("--concurrency", 8, "requests in flight: half over gRPC (the odd one too), half over HTTP"),
            ("--warmup", 500, "requests before the 'before' memory figures"),
            ("--max-seconds", 3600.0, "safety bound: no new request after this"),
            ("--dense-every", 50, "every Nth request asks for dense masks (0: never)"),
            ("--min-size", 128, "export: shortest edge"), ("--max-size", 213, "export: longest edge"),
            ("--proposals", 50, "export: RPN proposals per image"),
            ("--detections", 3, "export: detections per image at most"),
            ("--intra-op-threads", DEFAULT_INTRA_OP_THREADS,
             "export: mask_rcnn's torch intra-op threads (0: torch's default)"),
            ("--sample-every", 5.0, "seconds between memory samples under load"),
            ("--progress-every", 30.0, "seconds between progress lines on stderr"),
            ("--settle", 2.0, "seconds idle before the before/after memory figures"),
            ("--request-timeout", 300.0, "seconds a request may take before it counts as failed")):
        p.add_argument(flag, type=type(default), default=default, help=f"{text} (default {default})")
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="also send this image (repeatable); generated scenes are always sent")
    args = h.parse(p, argv, (lambda a: a.requests < 1 or a.concurrency < 2,
                             "need --requests >= 1 and --concurrency >= 2 (one per protocol at least)"),
                   (lambda a: a.warmup < 0 or a.dense_every < 0 or a.sample_every <= 0
                    or a.max_seconds <= 0, "need --warmup >= 0, --dense-every >= 0, "
                                           "--sample-every > 0, --max-seconds > 0"))
    command, machine = h.begin("benchmarks.load", argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"date: {started}", flush=True)
    images = [h.Image(f"{name} (generated)", h.scene(w, hh, 10 + i, ext, gray))
              for i, (name, hh, w, ext, gray) in enumerate(GENERATED)] + h.images(args.image, [], ())
    sets = [dict(s) for s in PARAMETER_SETS] + [dict(DENSE_PARAMETERS)]
    scratch = Path(tempfile.mkdtemp(prefix="bench-load-"))
    export_args = ["--proposals", str(args.proposals), "--detections", str(args.detections)]
    if args.intra_op_threads is not None:
        export_args += ["--set", f'mask_rcnn=parameters {{ key: "intra_op_threads" value '
                                 f'{{ string_value: "{args.intra_op_threads}" }} }}']
    try:
        repo = h.prepare_repository(args, scratch, export_args)
        with h.serve(repo.path, scratch / "triton.log") as server:
            print(f"sending {args.requests} requests ({args.warmup} warm-up) ...", flush=True)
            report = summarise(asyncio.run(run(server, images, sets, args)), images, sets, repo, args)
            server_pid = server.pid
        leftover = shm_usage(server_pid)  # what the stopped server left in /dev/shm
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"command": command, "date": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": machine, "server_pid": server_pid, **report,
              "targets": {"failures": FAILURES_TARGET, "growth_lt": GROWTH_TARGET},
              "loadavg_end": os.getloadavg(), "shm_left_after_stop": leftover}
    print_report(report)
    print(f"  /dev/shm after the server stopped: {leftover['files']} of its region file(s) "
          f"left ({h.fmt_bytes(leftover['allocated'])} allocated)")
    print(f"  load average at end: {h.loadavg()}")
    print(f"goals: {sum(report['verdicts'].values())}/{len(report['verdicts'])} PASS")
    h.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    h.run_main(main)
