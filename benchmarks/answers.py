"""python -m benchmarks.answers: the server's peak memory for the largest dense answer
pipeline_bls allows, over HTTP JSON, HTTP binary and gRPC.

  python -m benchmarks.answers                               # default max_answer_bytes
  python -m benchmarks.answers --max-answer-bytes 134217728  # what a raised bound costs

A dense answer is rendered again by the server for the wire: as JSON text over HTTP (a
number per mask pixel), as binary or protobuf otherwise. pipeline_bls refuses answers
over its max_answer_bytes (INVALID_ARG) before building them; this measures what the
largest allowed one costs. For each protocol a fresh server (so nothing else moved its
peak) answers warm-up requests, its peak RSS is reset (/proc/PID/clear_refs, 5), one
answer just under the bound is asked for, and the peak RSS of tritonserver and of
pipeline_bls's stub, and the backend's /dev/shm regions, are read. A request one row
over the bound is then checked to be refused with the message naming the bound.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.pipeline import (REQUEST_TIMEOUT_S, begin, fmt_bytes, model_file,
                                 prepare_repository, run_main, table, write_json)
from bls.contract.parameters import MAX_ANSWER_BYTES
from bls.contract.tensors import PIPELINE_INPUT, PIPELINE_NAME, PIPELINE_OUTPUTS
from export import samples

PROTOCOLS = ("http-json", "http-binary", "grpc")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def shm_bytes(run_triton_pid: int) -> int:
    return sum(p.stat().st_size for p in Path("/dev/shm").glob(f"triton_bls_{run_triton_pid}_*"))


def infer(server, protocol: str, data: bytes, parameters: dict) -> tuple[dict, int]:
    """(outputs by name, bytes received for them) for one request."""
    if protocol == "grpc":
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            tensor = grpcclient.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
            tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            result = client.infer(PIPELINE_NAME, [tensor], parameters=parameters,
                                  client_timeout=REQUEST_TIMEOUT_S)
            wire = result.get_response().ByteSize()
            return {s.name: result.as_numpy(s.name) for s in PIPELINE_OUTPUTS}, wire
    import tritonclient.http as httpclient

    binary = protocol == "http-binary"
    with httpclient.InferenceServerClient(server.http_url, network_timeout=REQUEST_TIMEOUT_S,
                                          connection_timeout=REQUEST_TIMEOUT_S) as client:
        tensor = httpclient.InferInput(PIPELINE_INPUT.name, [1, 1], PIPELINE_INPUT.dtype)
        tensor.set_data_from_numpy(np.array([[data]], dtype=object), binary_data=True)
        outputs = [httpclient.InferRequestedOutput(s.name, binary_data=binary)
                   for s in PIPELINE_OUTPUTS]
        result = client.infer(PIPELINE_NAME, [tensor], outputs=outputs, parameters=parameters)
        # binary: the body's bytes; JSON: the body is parsed on arrival, so its text is
        # measured again (compact, as Triton writes it)
        wire = (len(result._buffer) if binary else
                len(json.dumps(result.get_response(), separators=(",", ":"))))
        return {s.name: result.as_numpy(s.name) for s in PIPELINE_OUTPUTS}, wire


def image_for(bound: int, detections: int, aspect: float = 4 / 3) -> tuple[bytes, int, int]:
    """A generated JPEG whose dense answer with ``detections`` masks is just under
    ``bound`` (the fixed outputs take well under 64 bytes per detection)."""
    area = (bound - 64 * detections) // detections
    height = int((area / aspect) ** 0.5)
    width = area // height
    scene = samples.scene(height, width, seed=5)
    return samples.encode(scene, ".jpg"), height, width


def measure(repo: Path, protocol: str, data: bytes, parameters: dict, log: Path) -> dict:
    from server.launcher import TritonServer
    from server.watchdog import stubs

    with TritonServer(repo, log=log) as server:
        for _ in range(2):  # warm-up: both paths, small answers
            infer(server, protocol, data, {**parameters, "mask_format": "rle"})
        pid = server.tritonserver_pid
        [stub] = stubs(pid)[PIPELINE_NAME]
        before = {"server": status_kib(pid, "VmRSS"), "stub": status_kib(stub, "VmRSS"),
                  "shm": shm_bytes(server.pid)}
        reset_peak(pid)
        reset_peak(stub)
        start = time.perf_counter()
        outputs, wire = infer(server, protocol, data, parameters)
        elapsed = time.perf_counter() - start
        peak = {"server": status_kib(pid, "VmHWM"), "stub": status_kib(stub, "VmHWM")}
        masks = outputs["masks"]
        return {"seconds": elapsed, "masks_shape": list(masks.shape[1:]),
                "answer_bytes": int(sum(v.nbytes for v in outputs.values()
                                        if v.dtype != object)),
                "wire_bytes": wire,
                "server_peak_delta": (peak["server"] - before["server"]) * 1024,
                "stub_peak_delta": (peak["stub"] - before["stub"]) * 1024,
                "server_rss_before": before["server"] * 1024,
                "shm_delta": shm_bytes(server.pid) - before["shm"]}


def refused(repo: Path, data: bytes, parameters: dict, log: Path) -> str:
    from tritonclient.utils import InferenceServerException

    from server.launcher import TritonServer

    with TritonServer(repo, log=log) as server:
        try:
            infer(server, "grpc", data, parameters)
        except InferenceServerException as e:
            return f"{e.status()}: {e.message()}"
    return "ANSWERED (not refused)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.answers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-answer-bytes", type=int, default=MAX_ANSWER_BYTES,
                   help=f"pipeline_bls's bound to serve with (default {MAX_ANSWER_BYTES})")
    p.add_argument("--detections", type=int, default=20,
                   help="dense masks in the answer (max_detections; default 20)")
    p.add_argument("--protocol", action="append", choices=PROTOCOLS,
                   help="repeatable; default: all three")
    p.add_argument("--repository", type=Path,
                   help="an exported repository whose model file to use (not modified)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    args.min_size, args.max_size = 256, 384  # the answer's size does not depend on them

    from export.repository import assemble

    _, info = begin("benchmarks.answers", argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-answers-"))
    try:
        source = prepare_repository(args, scratch, ["--detections", str(args.detections),
                                                    "--proposals", "200"])
        repo = assemble(model_file(source.path), scratch / "served", {PIPELINE_NAME: (
            f'parameters {{ key: "max_answer_bytes" value {{ string_value: '
            f'"{args.max_answer_bytes}" }} }} '
            'parameters { key: "monitoring_policy" value { string_value: "" } }')})
        data, height, width = image_for(args.max_answer_bytes, args.detections)
        parameters = {"mask_format": "dense", "score_threshold": 0.0,
                      "max_detections": args.detections}
        print(f"answer: {args.detections} dense masks of {height}x{width} "
              f"({fmt_bytes(args.detections * height * width)}), bound "
              f"{fmt_bytes(args.max_answer_bytes)}")
        results = {}
        for protocol in args.protocol or PROTOCOLS:
            results[protocol] = measure(repo, protocol, data, parameters, scratch / "server.log")
            print(f"  {protocol}: done in {results[protocol]['seconds']:.1f} s", flush=True)
        over, _, _ = image_for(args.max_answer_bytes + args.detections * (width + 64) * 2,
                               args.detections)
        refusal = refused(repo, over, parameters, scratch / "server.log")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for protocol, r in results.items():
        detections = r["masks_shape"][0]
        rows.append([protocol, f"{detections} x {r['masks_shape'][1]}x{r['masks_shape'][2]}",
                     fmt_bytes(r["answer_bytes"]), fmt_bytes(r["wire_bytes"]),
                     fmt_bytes(r["server_peak_delta"]),
                     f"{r['server_peak_delta'] / max(r['answer_bytes'], 1):.1f}",
                     fmt_bytes(r["stub_peak_delta"]), fmt_bytes(r["shm_delta"]),
                     f"{r['seconds']:.1f}"])
    print(f"\n== peak memory for one answer just under max_answer_bytes = "
          f"{args.max_answer_bytes:,} ({fmt_bytes(args.max_answer_bytes)})")
    print(table(["protocol", "masks", "answer", "on the wire", "tritonserver peak +",
                 "x answer", "pipeline_bls stub peak +", "/dev/shm +", "seconds"], rows))
    print(f"  tritonserver RSS before the answer: "
          f"{fmt_bytes(max(r['server_rss_before'] for r in results.values()))}")
    print(f"  one row over the bound: {refusal}")
    write_json(args.json, {"machine": info, "max_answer_bytes": args.max_answer_bytes,
                           "results": results, "over_bound": refusal})
    ok = "max_answer_bytes" in refusal and all(
        r["masks_shape"][0] >= 1 for r in results.values())
    print(f"bound enforced and answers served: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    run_main(main)
