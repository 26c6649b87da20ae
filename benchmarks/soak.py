"""python -m benchmarks.soak: what grows tritonserver's own memory, one ingredient at a time.

Each ingredient gets a fresh server (the stand-in mask_rcnn, export/standin.py, so that
thousands of requests take a minute) and --requests requests at --concurrency, with
tritonserver's RSS, anonymous (its heap: what a leak grows) and shared memory (the Python
backend's /dev/shm regions it maps, which grow to the largest answer and stay) read every
--sample-every requests after a warm-up. Ingredients: grpc, http (rle answers), formats (rle, polygon, box, dense, none in
turn, gRPC), cancel (gRPC requests cancelled by a client deadline shorter than the
stand-in's latency), kills (the pipeline_bls stubs killed every --kill-every requests,
reloaded by run_triton.sh's watchdog), reloads (pipeline_bls reloaded in place as the
watchdog does, without a kill). Levels off: the last third of the samples grows its
anonymous memory by less than a tenth of the first third's growth (or not at all). Figures: docs/load.md, 'What grows tritonserver'."""

import asyncio
import os
import signal
import time
import urllib.request

import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio

from benchmarks import harness as h
from bls.contract.tensors import PIPELINE_NAME
from export import standin
from server.processes import proc_kb, stubs
from server.watchdog import reload

INGREDIENTS = ("grpc", "http", "formats", "cancel", "kills", "reloads")
FORMATS = ("rle", "polygon", "box", "dense", "none")
CANCEL_LATENCY_MS, CANCEL_DEADLINE_S = 40, 0.02


def tritonserver_memory(server) -> dict:
    status = proc_kb(server.tritonserver_pid, "status")
    return {"rss": status["VmRSS"], "anon": status["RssAnon"], "shmem": status["RssShmem"]}


async def soak(server, ingredient: str, image: bytes, args) -> list[dict]:
    """The ingredient's closed loop; tritonserver's memory every --sample-every answers."""
    grpc = grpc_aio.InferenceServerClient(server.grpc_url)
    http = http_aio.InferenceServerClient(server.http_url, conn_limit=args.concurrency)
    client, module = (http, http_aio) if ingredient == "http" else (grpc, grpc_aio)
    samples, done = [], 0

    async def send(k: int, worker: int) -> None:
        nonlocal done
        params = {"mask_format": FORMATS[k % len(FORMATS)]} if ingredient == "formats" else None
        timeout = {"client_timeout": CANCEL_DEADLINE_S} if ingredient == "cancel" else {}
        try:
            await client.infer(PIPELINE_NAME, [h.make_input(module, image, True)],
                               parameters=params, **timeout)
        finally:
            done += 1
            if done % args.sample_every == 0:
                samples.append({"done": done, **tritonserver_memory(server)})
            if ingredient == "kills" and done % args.kill_every == 0:
                for pid in stubs(server.tritonserver_pid).get(PIPELINE_NAME, ()):
                    os.kill(pid, signal.SIGKILL)
            if ingredient == "reloads" and done % args.kill_every == 0:
                await asyncio.to_thread(reload, f"http://{server.http_url}", PIPELINE_NAME,
                                        "x-unused", "-")

    try:
        await h.closed_loop(send, args.concurrency, args.warmup, 600)
        samples.clear()
        done = 0
        run = await h.closed_loop(send, args.concurrency, args.requests, args.max_seconds)
        samples.append({"done": done, **tritonserver_memory(server), "errors": run["errors"]})
    finally:
        await grpc.close()
        await http.close()
    return samples


def verdict(samples: list[dict], key: str) -> dict:
    """Growth from the first sample to the last, and by thirds: does it level off?"""
    values = [s[key] for s in samples]
    third = max(len(values) // 3, 1)
    first, last = values[third] - values[0], values[-1] - values[-1 - third]
    return {"start": values[0], "end": values[-1], "growth": values[-1] - values[0],
            "first_third": first, "last_third": last,
            "plateau": last <= max(first, 0) / 10 or values[-1] <= values[0]}


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.soak", __doc__, "json")
    add = p.add_argument
    add("--ingredients", type=lambda s: s.split(","), default=list(INGREDIENTS))
    for flag, default in (("--requests", 3000), ("--warmup", 300), ("--concurrency", 8),
                          ("--sample-every", 250), ("--kill-every", 500),
                          ("--max-seconds", 900.0)):
        add(flag, type=type(default), default=default, help=f"default {default}")
    args = h.parse(p, argv, (lambda a: set(a.ingredients) - set(INGREDIENTS),
                             f"--ingredients: choose from {', '.join(INGREDIENTS)}"))
    image, report = h.scene(640, 480, seed=3), {}
    with h.session("benchmarks.soak", argv) as run:
        for ingredient in args.ingredients:
            latency = CANCEL_LATENCY_MS if ingredient == "cancel" else 0
            repo = standin.make_repository(run.scratch / f"repo-{ingredient}", latency, 20, 28)
            extra = ("--watchdog", "off", "--model-control-mode", "explicit") \
                if ingredient == "reloads" else ()
            print(f"\n[{ingredient}]", flush=True)
            with h.serve(repo, run.scratch / f"{ingredient}.log", extra) as server:
                if ingredient == "reloads":  # explicit control loads nothing by itself
                    for model in ("mask_rcnn", "monitoring", PIPELINE_NAME):
                        urllib.request.urlopen(urllib.request.Request(
                            f"http://{server.http_url}/v2/repository/models/{model}/load",
                            b"{}", method="POST")).read()
                started = time.perf_counter()
                samples = asyncio.run(soak(server, ingredient, image, args))
                report[ingredient] = {"samples": samples, "seconds": time.perf_counter() - started,
                                      **{k: verdict(samples, k) for k in ("rss", "anon", "shmem")}}
    print("\n== tritonserver's own memory by ingredient (after a warm-up of "
          f"{args.warmup}; {args.requests} requests at concurrency {args.concurrency})")
    print(h.table(["ingredient", "RSS start", "RSS end", "shmem growth", "anon start",
                   "anon growth", "first third", "last third", "levels off", "errors"], [
        [name, h.fmt_bytes(r["rss"]["start"]), h.fmt_bytes(r["rss"]["end"]),
         h.fmt_bytes(r["shmem"]["growth"]), h.fmt_bytes(r["anon"]["start"]),
         h.fmt_bytes(r["anon"]["growth"]), h.fmt_bytes(r["anon"]["first_third"]),
         h.fmt_bytes(r["anon"]["last_third"]), "yes" if r["anon"]["plateau"] else "NO",
         sum(r["samples"][-1]["errors"].values())] for name, r in report.items()]))
    h.write_json(args.json, {"command": run.command, "machine": run.machine} | report)
    return 0


if __name__ == "__main__":
    h.run_main(main)
