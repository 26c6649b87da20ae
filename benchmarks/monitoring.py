"""python -m benchmarks.monitoring [--hang-s S] [--concurrency N]: pipeline_bls monitoring every
request (images captured) against an unmonitored copy, interleaved; answers compared, events
counted. Target: paired <= 2 %, <= 10 % with monitoring hung S s per event; N: also N clients."""

import asyncio
import json
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio

from benchmarks import harness as h
from bls.contract.tensors import MONITORING_NAME, PIPELINE_NAME, PIPELINE_OUTPUTS
from bls.monitoring.policy import POLICY_PARAMETER
from client.metrics import scrape, value
from export.repository import assemble, parameters_override
from export.tune import read_config, render

UNMONITORED = f"{PIPELINE_NAME}_unmonitored"
COPIES = (PIPELINE_NAME, UNMONITORED)
RECORDED = "monitoring_detections_per_request_count"  # one observation per event recorded
HUNG_MONITORING = '''import time, triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        time.sleep({})
        for request in requests:
            request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


def build_repository(model_file: Path, scratch: Path, hang_s: float) -> Path:
    """Monitoring on every request and an unmonitored copy; with ``hang_s`` a hung monitoring."""
    policy = {"sample_rate": 1.0} | ({} if hang_s else {"capture": "all"})
    repo = assemble(model_file, scratch / "repository", {
        PIPELINE_NAME: parameters_override(**{POLICY_PARAMETER: json.dumps(policy)}),
        MONITORING_NAME: parameters_override(capture_dir=scratch / "capture")})
    if hang_s:
        (repo / MONITORING_NAME / "1" / "model.py").write_text(HUNG_MONITORING.format(hang_s))
    shutil.copytree(repo / PIPELINE_NAME, repo / UNMONITORED)
    copy = read_config(repo / UNMONITORED / "config.pbtxt", UNMONITORED)
    copy.config.name = UNMONITORED
    copy.config.parameters[POLICY_PARAMETER].string_value = ""
    copy.path.write_text(render(copy))
    return repo


def compare(samples: dict) -> dict:
    on, off = h.summary(samples[PIPELINE_NAME]), h.summary(samples[UNMONITORED])
    return {"monitored": on, "unmonitored": off,
            "difference": on["median_ms"] / off["median_ms"] - 1}


async def concurrent(server, image: h.Image, clients: int, requests: int) -> dict:
    """``clients`` in closed loops at once, half of them on each copy."""
    async with grpc_aio.InferenceServerClient(server.grpc_url) as client:
        inputs = [h.make_input(grpc_aio, image.data, True)]
        loops = await asyncio.gather(*(h.closed_loop(
            lambda k, worker, m=m: client.infer(m, inputs, client_timeout=h.REQUEST_TIMEOUT_S),
            max(clients // 2, 1), requests // 2, h.REQUEST_TIMEOUT_S) for m in COPIES))
    return compare({model: loop["latencies"] for model, loop in zip(COPIES, loops)})


def run(server, images: list[h.Image], args) -> dict:
    """Interleaved sequential requests per image, the events recorded, the concurrent run."""
    report = {"images": {}, "events_sent": len(images) * (args.warmup + args.iterations),
              "events_recorded": 0}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for image in images:
            inputs = [h.make_input(grpcclient, image.data, True)]
            calls = {name: partial(client.infer, name, inputs, client_timeout=h.REQUEST_TIMEOUT_S)
                     for name in COPIES}
            samples, last = h.interleaved(calls, args.iterations, args.warmup, image.name)
            on, off = ({s.name: last[m].as_numpy(s.name) for s in PIPELINE_OUTPUTS} for m in COPIES)
            report["images"][image.name] = compare(samples) | {
                "paired": h.paired(samples[PIPELINE_NAME], samples[UNMONITORED]),
                "answers_equal": all(np.array_equal(on[k], off[k]) for k in off),
                "detections": int(off["scores"].shape[-1])}
    deadline = time.monotonic() + (0 if args.hang_s else 60)  # a hung monitoring records none
    while time.monotonic() < deadline and report["events_recorded"] < report["events_sent"]:
        time.sleep(0.5)  # events leave after their answers
        report["events_recorded"] = value(scrape(server.metrics_url), RECORDED)
    if args.concurrency:
        report["concurrent"] = asyncio.run(
            concurrent(server, images[0], args.concurrency, args.concurrent_requests))
    return report


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.monitoring", __doc__, "image", "size", "repository", "json")
    for flag, default in (("--iterations", 10), ("--warmup", 1), ("--hang-s", 0.0),
                          ("--concurrency", 0), ("--concurrent-requests", 32)):
        p.add_argument(flag, type=type(default), default=default)
    args = h.parse(p, argv)
    target = 0.10 if args.hang_s else 0.02
    with h.session("benchmarks.monitoring", argv, args) as ctx:
        repo = build_repository(h.model_file(ctx.repo.path), ctx.scratch, args.hang_s)
        with h.serve(repo) as server:
            report = run(server, h.images(args.image), args)
    rows = report["images"] | ({"concurrent": report["concurrent"]} if args.concurrency else {})
    passed = {name: abs(r.get("paired", r["difference"])) <= target and r.get("answers_equal", True)
              for name, r in rows.items()}  # judged on 'paired' where there is one
    print(f"\n== monitoring on vs off, {args.iterations} iterations each (paired: on/off - 1)")
    print(h.table(["run", "dets", "off median ms", "on median ms", "difference", "paired",
                   "same answers", "target", ""], [
        [name, r.get("detections", "-"), f"{r['unmonitored']['median_ms']:.1f}",
         f"{r['monitored']['median_ms']:.1f}", *(f"{r[k]:+.2%}" if k in r else "-" for k in (
             "difference", "paired")), r.get("answers_equal", "-"), f"<= {target:.0%}",
         h.verdict(passed[name])] for name, r in rows.items()]))
    events_ok = args.hang_s or report["events_recorded"] >= report["events_sent"]  # hung: none
    print(f"  monitoring recorded {report['events_recorded']:.0f}/{report['events_sent']} events")
    h.write_json(args.json, {"machine": ctx.machine, **report})
    print(f"goal: {h.verdict(all(passed.values()) and events_ok)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)
