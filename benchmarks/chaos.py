"""python -m benchmarks.chaos: the mixed load with pipeline_bls's stubs killed and monitoring
hung, as a client sees it.

One server (run_triton.sh, watchdog on; the stand-in mask_rcnn answering after
--latency-ms, so that requests are in flight when a stub dies; monitoring on every request,
its first --hang-events events hung --hang-s each) and --requests requests at --concurrency
cycling through the kinds below, each try retried as `python -m client infer` does
(client.cli.retryable: UNAVAILABLE, INTERNAL "... is not healthy.", a dropped connection)
up to --tries times. Both pipeline_bls stubs are SIGKILLed after the answers numbered in
--kills-at. Printed: per kind the outcomes and the retries; per kill the time until a
request sent after it was answered; tritonserver's RSS at --rss-from answers and at the
end, and its RSS, heap and mapped regions every --sample-every answers; /dev/shm before
the first kill and at the end; and the verdicts of issue 21: no try waits for its client's
deadline, no NOT_FOUND, every try ends as its kind should, no region of a dead stub left,
/dev/shm back to its size, RSS growth under 10 % from --rss-from to the end. Figures:
docs/load.md."""

import asyncio
import json
import os
import signal
import time
from collections import Counter

import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from benchmarks import harness as h
from benchmarks.soak import tritonserver_memory
from bls.contract.tensors import MONITORING_NAME, PIPELINE_NAME
from bls.monitoring.policy import POLICY_PARAMETER
from client.cli import retryable
from export import standin
from export.repository import parameters_override
from server.processes import shm_regions, shm_usage, stub_regions, stubs

# kind -> (protocol, image, request parameters, how a try of it should end)
KINDS = {
    "rle": ("grpc", "scene", {}, "answer"),
    "polygon": ("http", "scene", {"mask_format": "polygon"}, "answer"),
    "box": ("grpc", "scene", {"mask_format": "box"}, "answer"),
    "dense": ("http", "scene", {"mask_format": "dense"}, "answer"),
    "dense over the bound": ("grpc", "large", {"mask_format": "dense"}, "INVALID_ARG"),
    "malformed bytes": ("http", "junk", {}, "INVALID_ARG"),
    "cancelled by its client": ("grpc", "scene", {}, "deadline"),
}
CODES = {"StatusCode.INVALID_ARGUMENT": "INVALID_ARG", "400": "INVALID_ARG",
         "StatusCode.UNAVAILABLE": "UNAVAILABLE", "503": "UNAVAILABLE",
         "StatusCode.INTERNAL": "INTERNAL", "500": "INTERNAL",
         "StatusCode.NOT_FOUND": "NOT_FOUND", "404": "NOT_FOUND",
         "StatusCode.DEADLINE_EXCEEDED": "deadline", "StatusCode.CANCELLED": "CANCELLED"}
DEADLINE_S, CANCEL_DEADLINE_S = 30.0, 0.005
HUNG_AT_FIRST = '''import time, triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def initialize(self, args):
        self.hung = 0
    def execute(self, requests):
        if self.hung < {events}:
            self.hung += 1
            time.sleep({seconds})
        for request in requests:
            request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


def outcome(error: BaseException) -> str:
    """A failed try as a code name (CODES), 'deadline', or the exception's type."""
    if isinstance(error, InferenceServerException):
        return CODES.get(str(error.status()), str(error.status()))
    if isinstance(error, asyncio.TimeoutError):
        return "deadline"
    return type(error).__name__


async def load(server, images: dict, args) -> dict:
    """The closed loop; per kind the tries' outcomes and retries, kills and samples."""
    grpc = grpc_aio.InferenceServerClient(server.grpc_url)
    http = http_aio.InferenceServerClient(server.http_url, conn_limit=args.concurrency)
    names = list(KINDS)
    ended = {kind: Counter() for kind in names}
    retries, kills, rss, samples = Counter(), [], {}, []
    answered = 0

    async def once(kind: str) -> None:
        protocol, image, parameters, _ = KINDS[kind]
        module, client = (grpc_aio, grpc) if protocol == "grpc" else (http_aio, http)
        call = client.infer(PIPELINE_NAME, [h.make_input(module, images[image], True)],
                            parameters=parameters or None,
                            **({"client_timeout": CANCEL_DEADLINE_S if kind.startswith("cancel")
                                else DEADLINE_S} if protocol == "grpc" else {}))
        await asyncio.wait_for(call, DEADLINE_S + 5)

    async def send(k: int, worker: int) -> None:
        nonlocal answered
        kind, sent = names[k % len(names)], time.monotonic()
        for attempt in range(args.tries):
            try:
                await once(kind)
                result = "answer"
            except Exception as e:  # noqa: BLE001  every way a try can end is counted
                result = outcome(e)
                if retryable(e) and attempt + 1 < args.tries:
                    retries[kind] += 1
                    await asyncio.sleep(min(1.0, 0.1 * 2 ** attempt))
                    continue
            break
        ended[kind][result] += 1
        if result == "answer":
            for kill in kills:
                if kill["back_s"] is None and sent > kill["at"]:
                    kill["back_s"] = time.monotonic() - kill["at"]
        answered += 1
        if answered % args.sample_every == 0 or answered == args.rss_from:
            samples.append({"answered": answered, **memory(server)})
        if answered == args.rss_from:
            rss["from"] = samples[-1]["rss"]
        if answered in args.kills_at:
            if not kills:
                rss["shm_before"] = shm_usage(server.pid)
            pids = stubs(server.tritonserver_pid).get(PIPELINE_NAME, set())
            kills.append({"after": answered, "at": time.monotonic(), "stubs": len(pids),
                          "back_s": None})
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

    try:
        run = await h.closed_loop(send, args.concurrency, args.requests, args.max_seconds)
    finally:
        await grpc.close()
        await http.close()
    await asyncio.sleep(2)  # the watchdog's last reload and region removal
    samples[-1:] = [s for s in samples[-1:] if s["answered"] != answered]  # settled: again
    samples.append({"answered": answered, **memory(server)})
    rss["end"] = samples[-1]["rss"]
    live = set(stub_regions(set().union(*stubs(server.tritonserver_pid).values())).values())
    orphans = [p.name for p in shm_regions(server.pid) if p.name not in live]
    return {"ended": {k: dict(v) for k, v in ended.items()}, "retries": dict(retries),
            "kills": kills, "rss": rss, "shm_after": shm_usage(server.pid),
            "orphan_regions": orphans, "samples": samples,
            "seconds": run["seconds"], "answered": answered}


def memory(server) -> dict:
    """tritonserver's RSS, anonymous (its heap) and shared (the stubs' regions it maps)
    memory, and the server's /dev/shm regions."""
    return tritonserver_memory(server) | {"shm": shm_usage(server.pid)}


def verdicts(report: dict) -> dict:
    ended = report["ended"]
    wrong = {kind: {o: n for o, n in outcomes.items() if o != KINDS[kind][3]}
             for kind, outcomes in ended.items()}
    deadline = sum(n for kind, o in ended.items() if KINDS[kind][3] != "deadline"
                   for what, n in o.items() if what == "deadline")
    before, after, rss = report["rss"].get("shm_before"), report["shm_after"], report["rss"]
    growth = rss["end"] / rss["from"] - 1 if "from" in rss else float("nan")
    return {
        "no try waits for its client's deadline": deadline == 0,
        "no NOT_FOUND": not any(o.get("NOT_FOUND") for o in ended.values()),
        "every try ends as its kind should": not any(wrong.values()),
        "no region of a dead stub left in /dev/shm": not report["orphan_regions"],
        "/dev/shm back to its size before the kills": before is None or (
            after["files"] <= before["files"] and after["allocated"] <= before["allocated"]),
        f"tritonserver RSS growth from answer {report['rss_from']} to the end < 10 %":
            growth < 0.10,
    } | {"_wrong": wrong, "_rss_growth": growth}


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.chaos", __doc__, "json")
    add = p.add_argument
    for flag, default in (("--requests", 1500), ("--concurrency", 8), ("--tries", 8),
                          ("--latency-ms", 20.0), ("--hang-events", 10), ("--hang-s", 20.0),
                          ("--rss-from", 1500), ("--sample-every", 500),
                          ("--max-seconds", 3600.0)):
        add(flag, type=type(default), default=default, help=f"default {default}")
    add("--kills-at", type=lambda s: {int(x) for x in s.split(",") if x}, default={500, 1000},
        help="answers after which both pipeline_bls stubs are killed (default 500,1000)")
    args = h.parse(p, argv, (lambda a: a.rss_from > a.requests,
                             "--rss-from: at most --requests"))
    images = {"scene": h.scene(640, 480, seed=3), "large": h.scene(1920, 1080, seed=4),
              "junk": b"this is not an image"}
    with h.session("benchmarks.chaos", argv) as run:
        repo = standin.make_repository(run.scratch / "repository", args.latency_ms, 20, 28, overrides={
            PIPELINE_NAME: parameters_override(**{POLICY_PARAMETER: json.dumps({"sample_rate": 1.0})})})
        (repo / MONITORING_NAME / "1" / "model.py").write_text(
            HUNG_AT_FIRST.format(events=args.hang_events, seconds=args.hang_s))
        with h.serve(repo, run.scratch / "server.log") as server:
            report = asyncio.run(load(server, images, args)) | {"rss_from": args.rss_from}
        checks = verdicts(report)
    print(f"\n== {report['answered']} requests in {report['seconds']:.0f} s at concurrency "
          f"{args.concurrency}; {len(report['kills'])} kills of pipeline_bls's stubs; monitoring "
          f"hung {args.hang_s:g} s on its first {args.hang_events} events")
    print(h.table(["kind", "should end", "tries", "retries", "how they ended"], [
        [kind, KINDS[kind][3], sum(o.values()), report["retries"].get(kind, 0),
         ", ".join(f"{what} {n}" for what, n in sorted(o.items()))]
        for kind, o in report["ended"].items()], left=2))
    for kill in report["kills"]:
        back = "never" if kill["back_s"] is None else f"{kill['back_s']:.2f} s"
        print(f"  kill after answer {kill['after']} ({kill['stubs']} stubs): a request sent "
              f"after it answered {back} later")
    rss, shm = report["rss"], report["shm_after"]
    print(f"  tritonserver RSS: {h.fmt_bytes(rss.get('from', float('nan')))} at answer "
          f"{args.rss_from}, {h.fmt_bytes(rss['end'])} at the end "
          f"({checks['_rss_growth']:+.1%})")
    print("  tritonserver memory by answers: " + ", ".join(
        f"{m['answered']}: RSS {h.fmt_bytes(m['rss'])} (heap {h.fmt_bytes(m['anon'])}, "
        f"regions mapped {h.fmt_bytes(m['shmem'])})" for m in report["samples"]))
    if "shm_before" in rss:
        print(f"  /dev/shm: {rss['shm_before']['files']} regions, "
              f"{h.fmt_bytes(rss['shm_before']['allocated'])} before the first kill; "
              f"{shm['files']}, {h.fmt_bytes(shm['allocated'])} at the end")
    for name, ok in checks.items():
        if not name.startswith("_"):
            print(f"  {h.verdict(ok)}  {name}")
    h.write_json(args.json, {"command": run.command, "machine": run.machine} | report
                 | {"verdicts": checks})
    return 0


if __name__ == "__main__":
    h.run_main(main)
