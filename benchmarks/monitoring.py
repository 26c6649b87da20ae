"""python -m benchmarks.monitoring: pipeline_bls latency with monitoring on every request
against monitoring off, side by side on one server (target: <= 2 % difference; with a
hung monitoring, --hang-s, <= 10 %).

  python -m benchmarks.monitoring --repository build/bench/repository --image photo.jpg
  python -m benchmarks.monitoring --min-size 320 --max-size 533 --iterations 20
  python -m benchmarks.monitoring --min-size 320 --max-size 533 --iterations 30 \
      --hang-s 30 --concurrency 4 --concurrent-requests 32    # monitoring hung 30 s/event

The repository is assembled from an exported model file with two copies of pipeline_bls:
``pipeline_bls`` sends every answered request to monitoring (sample_rate 1, images
captured into a scratch directory), ``pipeline_bls_unmonitored`` never does. Requests
alternate between them (order rotated each iteration), sequential gRPC, so both meet
the same machine state. The answers of the two are checked equal and monitoring's event
count is checked against the requests sent.

--hang-s S replaces monitoring's model.py with one that takes S seconds per event (a hung
neighbour; nothing is captured then, and no event count is expected). --concurrency C
adds a concurrent run: C clients, each alternating between the two copies, so both see
the same load; their medians are compared. The outcomes pipeline_bls counted for its
events are printed from its metrics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

import numpy as np

from benchmarks.pipeline import (REQUEST_TIMEOUT_S, begin, check_images, grpc_bytes_input,
                                 load_images, model_file, prepare_repository, rotated,
                                 run_main, stats_ms, table, verdict, write_json)
from bls.contract.tensors import MONITORING_NAME, MONITORING_OUTPUT, PIPELINE_NAME, PIPELINE_OUTPUTS
from bls.monitoring.policy import POLICY_PARAMETER

UNMONITORED = f"{PIPELINE_NAME}_unmonitored"
TARGET = 0.02
HUNG_TARGET = 0.10
POLICY = {"sample_rate": 1.0, "capture": "all"}
HUNG_POLICY = {"sample_rate": 1.0}
# monitoring/1/model.py for --hang-s: every event takes that long to be acknowledged.
HUNG_MONITORING = '''
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep({seconds})
        for request in requests:
            request.get_response_sender().send(
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def build_repository(model_file: Path, target: Path, capture: Path,
                     hang_s: float | None = None) -> Path:
    """The benchmark repository: monitoring on every request, plus an unmonitored copy;
    with ``hang_s``, a monitoring model that takes that long per event."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from export.repository import assemble

    def parameter(key, value):
        return f"parameters {{ key: {json.dumps(key)} value {{ string_value: {json.dumps(value)} }} }}"

    policy = POLICY if hang_s is None else HUNG_POLICY
    repo = assemble(model_file, target, {
        PIPELINE_NAME: parameter(POLICY_PARAMETER, json.dumps(policy)),
        MONITORING_NAME: parameter("capture_dir", str(capture))})
    if hang_s is not None:
        (repo / MONITORING_NAME / "1" / "model.py").write_text(
            HUNG_MONITORING.format(seconds=hang_s))
    shutil.copytree(repo / PIPELINE_NAME, repo / UNMONITORED)
    config_path = repo / UNMONITORED / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    config.name = UNMONITORED
    config.parameters[POLICY_PARAMETER].string_value = ""
    config_path.write_text(text_format.MessageToString(config))
    return repo


def monitoring_events(client) -> int:
    """Events monitoring has recorded (its 'stats' command, over a gRPC stream)."""
    import queue

    import tritonclient.grpc as grpcclient

    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        command = grpcclient.InferInput("command", [1], "BYTES")
        command.set_data_from_numpy(np.array([b"stats"], dtype=np.object_))
        client.async_stream_infer(MONITORING_NAME, [command])
        result, error = answers.get(timeout=60)
    finally:
        client.stop_stream()
    if error is not None:
        raise RuntimeError(f"monitoring stats failed: {error}")
    return json.loads(result.as_numpy(MONITORING_OUTPUT.name)[0])["events"]


def concurrent(server, image, clients: int, requests: int) -> dict:
    """``clients`` threads, ``requests`` in all, each client alternating between the two
    copies: both meet the same load. -> latency statistics per copy."""
    import threading

    import tritonclient.grpc as grpcclient

    samples = {PIPELINE_NAME: [], UNMONITORED: []}
    left = iter(range(requests))
    lock = threading.Lock()

    def client_loop(offset: int):
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            inputs = [grpc_bytes_input(grpcclient, image.data, [1])]
            for k in count(offset):  # this client alternates; its neighbour starts on the other
                with lock:
                    i = next(left, None)
                if i is None:
                    return
                model = (PIPELINE_NAME, UNMONITORED)[k % 2]
                start = time.perf_counter()
                client.infer(model, inputs, client_timeout=REQUEST_TIMEOUT_S)
                with lock:
                    samples[model].append(time.perf_counter() - start)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    on, off = stats_ms(samples[PIPELINE_NAME]), stats_ms(samples[UNMONITORED])
    return {"monitored": on, "unmonitored": off,
            "difference_median": on["median_ms"] / off["median_ms"] - 1}


def event_outcomes(server) -> dict:
    from client.metrics import scrape, value

    samples = scrape(server.metrics_url)
    return {o: value(samples, "pipeline_monitoring_calls_total", outcome=o)
            for o in ("ok", "failed", "timeout", "dropped", "abandoned")}


def run(server, images, iterations: int, warmup: int, hung: bool = False) -> dict:
    import tritonclient.grpc as grpcclient

    results = {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        sent = 0
        for image in images:
            inputs = [grpc_bytes_input(grpcclient, image.data, [1])]
            samples = {PIPELINE_NAME: [], UNMONITORED: []}
            answers = {}
            for i in range(warmup + iterations):
                for model in rotated(list(samples), i):
                    start = time.perf_counter()
                    result = client.infer(model, inputs, client_timeout=REQUEST_TIMEOUT_S)
                    elapsed = time.perf_counter() - start
                    if i >= warmup:
                        samples[model].append(elapsed)
                    answers[model] = {s.name: result.as_numpy(s.name) for s in PIPELINE_OUTPUTS}
                    sent += model == PIPELINE_NAME
                print(f"  {image.name}: iteration {i + 1}/{warmup + iterations}"
                      f"{' (warm-up)' if i < warmup else ''}", file=sys.stderr, flush=True)
            same = all(np.array_equal(answers[PIPELINE_NAME][n], answers[UNMONITORED][n])
                       for n in answers[UNMONITORED])
            on, off = stats_ms(samples[PIPELINE_NAME]), stats_ms(samples[UNMONITORED])
            results[image.name] = {
                "monitored": on, "unmonitored": off,
                "difference_median": on["median_ms"] / off["median_ms"] - 1,
                "difference_mean": on["mean_ms"] / off["mean_ms"] - 1,
                "paired_median": statistics.median(
                    a / b - 1 for a, b in zip(samples[PIPELINE_NAME], samples[UNMONITORED])),
                "answers_equal": same,
                "detections": int(answers[UNMONITORED]["scores"].shape[-1]),
            }
        events = None
        if not hung:  # a hung monitoring answers no stats command either
            deadline = time.monotonic() + 60
            while (events := monitoring_events(client)) < sent and time.monotonic() < deadline:
                time.sleep(0.5)
    return {"images": results, "events_sent": sent, "events_recorded": events}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.monitoring", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="image to send (repeatable); default: a generated 640x480 JPEG")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--min-size", type=int, help="export: shortest edge (default 800)")
    p.add_argument("--max-size", type=int, help="export: longest edge (default 1333)")
    p.add_argument("--repository", type=Path,
                   help="an exported repository whose model file to use (not modified)")
    p.add_argument("--hang-s", type=float,
                   help="monitoring takes this many seconds per event (a hung neighbour)")
    p.add_argument("--concurrency", type=int, default=0,
                   help="also a concurrent run with this many clients (default: none)")
    p.add_argument("--concurrent-requests", type=int, default=32,
                   help="requests in the concurrent run, split between the copies")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.concurrency < 0 or \
            args.concurrent_requests < 2 or (args.hang_s is not None and args.hang_s <= 0):
        p.error("need --iterations >= 1, --warmup >= 0, --concurrency >= 0, "
                "--concurrent-requests >= 2, --hang-s > 0")
    hung = args.hang_s is not None
    target = HUNG_TARGET if hung else TARGET

    check_images(p, args.image)
    from server.launcher import TritonServer

    _, info = begin("benchmarks.monitoring", argv)
    images = load_images(args.image)
    scratch = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    try:
        source = prepare_repository(args, scratch)
        repo = build_repository(model_file(source.path), scratch / "repository",
                                scratch / "capture", args.hang_s)
        print(f"model: {source.meta.source}, input shortest edge {source.meta.min_size}, "
              f"longest <= {source.meta.max_size}; policy for {PIPELINE_NAME}: "
              f"{json.dumps(HUNG_POLICY if hung else POLICY)}"
              + (f"; monitoring takes {args.hang_s:g} s per event" if hung else ""))
        with TritonServer(repo) as server:
            report = run(server, images, args.iterations, args.warmup, hung)
            if args.concurrency:
                report["concurrent"] = concurrent(server, images[0], args.concurrency,
                                                  args.concurrent_requests)
            report["event_outcomes"] = event_outcomes(server)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for name, r in report["images"].items():
        rows.append([name, f"{r['detections']}", f"{r['unmonitored']['median_ms']:.1f}",
                     f"{r['monitored']['median_ms']:.1f}", f"{r['difference_median']:+.2%}",
                     f"{r['difference_mean']:+.2%}", f"{r['paired_median']:+.2%}",
                     "yes" if r["answers_equal"] else "NO", f"<= {target:.0%}",
                     verdict(abs(r["paired_median"]) <= target and r["answers_equal"])])
    print(f"\n== pipeline_bls with monitoring on every request vs off ({args.iterations} "
          f"interleaved iterations after {args.warmup} warm-up, sequential gRPC)")
    print(table(["image", "dets", "off median ms", "on median ms", "diff(med)", "diff(mean)",
                 "paired", "same answers", "target", ""], rows))
    print("  goal on 'paired': the median over iterations of on/off - 1 for the two requests "
          "of the same iteration, which cancels the machine's drift (medians of each side "
          "do not)")
    if hung:
        print(f"  monitoring hung ({args.hang_s:g} s per event): no event count expected")
    else:
        print(f"  monitoring recorded {report['events_recorded']} of {report['events_sent']} "
              f"events sent")
    ok = all(abs(r["paired_median"]) <= target and r["answers_equal"]
             for r in report["images"].values())
    if "concurrent" in report:
        c = report["concurrent"]
        print(f"\n== concurrent run: {args.concurrency} clients, {args.concurrent_requests} "
              f"requests alternating between the copies ({images[0].name})")
        print(table(["copy", "median ms", "max ms", "requests"], [
            [name, f"{c[key]['median_ms']:.1f}", f"{c[key]['max_ms']:.1f}", f"{c[key]['n']}"]
            for name, key in (("monitoring off", "unmonitored"), ("monitoring on", "monitored"))]))
        print(f"  difference of the medians: {c['difference_median']:+.2%} (target <= "
              f"{target:.0%}) {verdict(abs(c['difference_median']) <= target)}")
        ok = ok and abs(c["difference_median"]) <= target
    print("  pipeline_bls's event outcomes (pipeline_monitoring_calls_total): "
          + ", ".join(f"{k} {v:.0f}" for k, v in report["event_outcomes"].items()))
    write_json(args.json, {"machine": info, **report})
    if not hung:
        ok = ok and report["events_recorded"] >= report["events_sent"]
    print(f"goal: {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    run_main(main)
