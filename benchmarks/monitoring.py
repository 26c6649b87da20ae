"""python -m benchmarks.monitoring: pipeline_bls with monitoring on every request (images captured) against
an unmonitored copy, interleaved on one server (target <= 2 %; monitoring hung by --hang-s: <= 10 %); answers
compared, events counted; --concurrency: also a closed loop alternating between the copies.

  python -m benchmarks.monitoring --min-size 320 --max-size 533 --iterations 30 --hang-s 30 --concurrency 4
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks import harness as h
from bls.contract.tensors import MONITORING_NAME, MONITORING_OUTPUT, PIPELINE_NAME, PIPELINE_OUTPUTS
from bls.monitoring.policy import POLICY_PARAMETER

UNMONITORED = f"{PIPELINE_NAME}_unmonitored"
TARGET, HUNG_TARGET = 0.02, 0.10
POLICY = {"sample_rate": 1.0, "capture": "all"}
HUNG_POLICY = {"sample_rate": 1.0}
HUNG_MONITORING = '''
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep({seconds})
        for request in requests:
            request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

def build_repository(model_file: Path, target: Path, capture: Path, hang_s: float | None) -> Path:
    """Monitoring on every request, an unmonitored copy; with ``hang_s`` a hung monitoring."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from export.repository import assemble

    def parameter(key, value):
        return f"parameters {{ key: {json.dumps(key)} value {{ string_value: {json.dumps(value)} }} }}"

    repo = assemble(model_file, target, {
        PIPELINE_NAME: parameter(POLICY_PARAMETER, json.dumps(POLICY if hang_s is None else HUNG_POLICY)),
        MONITORING_NAME: parameter("capture_dir", str(capture))})
    if hang_s is not None:
        (repo / MONITORING_NAME / "1" / "model.py").write_text(HUNG_MONITORING.format(seconds=hang_s))
    shutil.copytree(repo / PIPELINE_NAME, repo / UNMONITORED)
    path = repo / UNMONITORED / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    config.name = UNMONITORED
    config.parameters[POLICY_PARAMETER].string_value = ""
    path.write_text(text_format.MessageToString(config))
    return repo

def monitoring_events(client) -> int:
    """Events monitoring has recorded (its 'stats' command over a gRPC stream; sync client)."""
    import queue

    import tritonclient.grpc as grpcclient

    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(MONITORING_NAME, [h.tensor_input(grpcclient, "command", np.array([b"stats"], object))])
        result, error = answers.get(timeout=60)
    finally:
        client.stop_stream()
    if error is not None:
        raise RuntimeError(f"monitoring stats failed: {error}")
    return json.loads(result.as_numpy(MONITORING_OUTPUT.name)[0])["events"]

def compare(samples: dict) -> dict:
    on, off = h.summary(samples[PIPELINE_NAME]), h.summary(samples[UNMONITORED])
    return {"monitored": on, "unmonitored": off, "difference_median": on["median_ms"] / off["median_ms"] - 1,
            "difference_mean": on["mean_ms"] / off["mean_ms"] - 1}

async def concurrent(server, image: h.Image, clients: int, requests: int) -> dict:
    """``clients`` in a closed loop, requests alternating between the two copies (the same load)."""
    import tritonclient.grpc.aio as grpc_aio

    split, models = {PIPELINE_NAME: [], UNMONITORED: []}, (PIPELINE_NAME, UNMONITORED)
    async with grpc_aio.InferenceServerClient(server.grpc_url) as client:
        inputs = [h.make_input(grpc_aio, image.data, True)]

        async def send(k: int, worker: int) -> None:
            split[models[k % 2]].append((await h.timed_async(client.infer(
                models[k % 2], inputs, client_timeout=h.REQUEST_TIMEOUT_S)))[0])

        await h.closed_loop(send, clients, requests, h.REQUEST_TIMEOUT_S)
    return compare(split)

def run(server, images: list[h.Image], args) -> dict:
    """Interleaved sequential requests per image, the concurrent run, the events and outcomes."""
    import tritonclient.grpc as grpcclient

    from client.metrics import scrape, value

    report, sent = {"images": {}, "events_recorded": None}, 0
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for image in images:
            inputs = [h.make_input(grpcclient, image.data, True)]
            samples, last = h.interleaved(client, {m: (m, inputs, None) for m in (PIPELINE_NAME, UNMONITORED)},
                                          args.iterations, args.warmup, image.name)
            sent += args.warmup + args.iterations
            answers = {m: {s.name: r.as_numpy(s.name) for s in PIPELINE_OUTPUTS} for m, r in last.items()}
            report["images"][image.name] = compare(samples) | {
                "paired_median": h.paired(samples[PIPELINE_NAME], samples[UNMONITORED]),
                "answers_equal": all(np.array_equal(answers[PIPELINE_NAME][n], v) for n, v in answers[UNMONITORED].items()),
                "detections": int(answers[UNMONITORED]["scores"].shape[-1])}
        deadline = time.monotonic() + 60
        while args.hang_s is None and time.monotonic() < deadline:  # a hung monitoring answers no stats either
            if (events := monitoring_events(client)) >= sent:
                break
            time.sleep(0.5)
        report["events_recorded"] = events if args.hang_s is None else None
        if args.concurrency:
            report["concurrent"] = asyncio.run(concurrent(server, images[0], args.concurrency, args.concurrent_requests))
    samples = scrape(server.metrics_url)
    return report | {"events_sent": sent, "event_outcomes": {o: value(samples, "pipeline_monitoring_calls_total",
                     outcome=o) for o in ("ok", "failed", "timeout", "dropped", "abandoned")}}

def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.monitoring", __doc__, "image", "size", "repository", "json")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--hang-s", type=float, help="monitoring takes this many seconds per event")
    p.add_argument("--concurrency", type=int, default=0, help="also a concurrent run, this many clients")
    p.add_argument("--concurrent-requests", type=int, default=32, help="requests in the concurrent run")
    args = h.parse(p, argv, (lambda a: min(a.iterations - 1, a.warmup, a.concurrency, a.concurrent_requests - 2) < 0
                             or (a.hang_s is not None and a.hang_s <= 0), "need --iterations >= 1, --warmup >= 0, --concurrency >= 0, "
                                                      "--concurrent-requests >= 2, --hang-s > 0"))
    hung, target = args.hang_s is not None, HUNG_TARGET if args.hang_s is not None else TARGET
    with h.session("benchmarks.monitoring", argv, args) as ctx:
        repo = build_repository(h.model_file(ctx.repo.path), ctx.scratch / "repository", ctx.scratch / "capture",
                                args.hang_s)
        print(f"model: {ctx.repo.meta.source}, input shortest edge {ctx.repo.meta.min_size}, longest <= "
              f"{ctx.repo.meta.max_size}; policy for {PIPELINE_NAME}: {json.dumps(HUNG_POLICY if hung else POLICY)}"
              + (f"; monitoring takes {args.hang_s:g} s per event" if hung else ""))
        with h.serve(repo) as server:
            report = run(server, images := h.images(args.image), args)
    passed = {name: abs(r["paired_median"]) <= target and r["answers_equal"] for name, r in report["images"].items()}
    print(f"\n== pipeline_bls with monitoring on every request vs off ({args.iterations} interleaved iterations after "
          f"{args.warmup} warm-up, sequential gRPC; the goal on 'paired': the median of on/off - 1 per iteration)")
    print(h.table(["image", "dets", "off median ms", "on median ms", "diff(med)", "diff(mean)", "paired",
                   "same answers", "target", ""], [
        [name, r["detections"], f"{r['unmonitored']['median_ms']:.1f}", f"{r['monitored']['median_ms']:.1f}",
         *(f"{r[k]:+.2%}" for k in ("difference_median", "difference_mean", "paired_median")),
         "yes" if r["answers_equal"] else "NO", f"<= {target:.0%}", h.verdict(passed[name])]
        for name, r in report["images"].items()]))
    print(f"  monitoring hung ({args.hang_s:g} s per event): no event count expected" if hung else
          f"  monitoring recorded {report['events_recorded']} of {report['events_sent']} events sent")
    ok = all(passed.values()) and (hung or report["events_recorded"] >= report["events_sent"])
    if c := report.get("concurrent"):
        print(f"\n== concurrent run: {args.concurrency} clients, {args.concurrent_requests} requests alternating "
              f"between the copies ({images[0].name})\n" + h.table(["copy", "median ms", "max ms", "requests"], [
                  [name, f"{c[key]['median_ms']:.1f}", f"{c[key]['max_ms']:.1f}", c[key]["n"]]
                  for name, key in (("monitoring off", "unmonitored"), ("monitoring on", "monitored"))]))
        ok = ok and abs(c["difference_median"]) <= target
        print(f"  difference of the medians: {c['difference_median']:+.2%} (target <= {target:.0%}) "
              f"{h.verdict(abs(c['difference_median']) <= target)}")
    print("  pipeline_bls's event outcomes (pipeline_monitoring_calls_total): "
          + ", ".join(f"{k} {v:.0f}" for k, v in report["event_outcomes"].items()))
    h.write_json(args.json, {"machine": ctx.machine, **report})
    print(f"goal: {h.verdict(ok)}")
    return 0

if __name__ == "__main__":
    h.run_main(main)
