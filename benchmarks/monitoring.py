"""python -m benchmarks.monitoring: pipeline_bls latency with monitoring on every request
against monitoring off, side by side on one server (target: <= 2 % difference).

  python -m benchmarks.monitoring --repository build/bench/repository --image photo.jpg
  python -m benchmarks.monitoring --min-size 320 --max-size 533 --iterations 20

The repository is assembled from an exported model file with two copies of pipeline_bls:
``pipeline_bls`` sends every answered request to monitoring (sample_rate 1, images
captured into a scratch directory), ``pipeline_bls_unmonitored`` never does. Requests
alternate between them (order rotated each iteration), sequential gRPC, so both meet
the same machine state. The answers of the two are checked equal and monitoring's event
count is checked against the requests sent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.pipeline import (REQUEST_TIMEOUT_S, begin, check_images, grpc_bytes_input,
                                 load_images, model_file, prepare_repository, rotated,
                                 run_main, stats_ms, table, verdict, write_json)
from bls.contract import MONITORING_NAME, MONITORING_OUTPUT, PIPELINE_NAME, PIPELINE_OUTPUTS
from bls.policy import POLICY_PARAMETER

UNMONITORED = f"{PIPELINE_NAME}_unmonitored"
TARGET = 0.02
POLICY = {"sample_rate": 1.0, "capture": "all"}


def build_repository(model_file: Path, target: Path, capture: Path) -> Path:
    """The benchmark repository: monitoring on every request, plus an unmonitored copy."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from export.repository import assemble

    def parameter(key, value):
        return f"parameters {{ key: {json.dumps(key)} value {{ string_value: {json.dumps(value)} }} }}"

    repo = assemble(model_file, target, {
        PIPELINE_NAME: parameter(POLICY_PARAMETER, json.dumps(POLICY)),
        MONITORING_NAME: parameter("capture_dir", str(capture))})
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


def run(server, images, iterations: int, warmup: int) -> dict:
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
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        p.error("need --iterations >= 1 and --warmup >= 0")

    check_images(p, args.image)
    from client.server import TritonServer

    _, info = begin("benchmarks.monitoring", argv)
    images = load_images(args.image)
    scratch = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    try:
        source = prepare_repository(args, scratch)
        repo = build_repository(model_file(source.path), scratch / "repository", scratch / "capture")
        print(f"model: {source.meta.source}, input shortest edge {source.meta.min_size}, "
              f"longest <= {source.meta.max_size}; policy for {PIPELINE_NAME}: {json.dumps(POLICY)}")
        with TritonServer(repo) as server:
            report = run(server, images, args.iterations, args.warmup)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for name, r in report["images"].items():
        rows.append([name, f"{r['detections']}", f"{r['unmonitored']['median_ms']:.1f}",
                     f"{r['monitored']['median_ms']:.1f}", f"{r['difference_median']:+.2%}",
                     f"{r['difference_mean']:+.2%}", f"{r['paired_median']:+.2%}",
                     "yes" if r["answers_equal"] else "NO", f"<= {TARGET:.0%}",
                     verdict(abs(r["paired_median"]) <= TARGET and r["answers_equal"])])
    print(f"\n== pipeline_bls with monitoring on every request vs off ({args.iterations} "
          f"interleaved iterations after {args.warmup} warm-up, sequential gRPC)")
    print(table(["image", "dets", "off median ms", "on median ms", "diff(med)", "diff(mean)",
                 "paired", "same answers", "target", ""], rows))
    print("  goal on 'paired': the median over iterations of on/off - 1 for the two requests "
          "of the same iteration, which cancels the machine's drift (medians of each side "
          "do not)")
    print(f"  monitoring recorded {report['events_recorded']} of {report['events_sent']} "
          f"events sent")
    write_json(args.json, {"machine": info, **report})
    ok = all(abs(r["paired_median"]) <= TARGET and r["answers_equal"]
             for r in report["images"].values())
    ok = ok and report["events_recorded"] >= report["events_sent"]
    print(f"goal: {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    run_main(main)
