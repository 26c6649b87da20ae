"""python -m benchmarks.answers: the server's peak memory (tritonserver, pipeline_bls's stub, /dev/shm) for
the largest dense answer max_answer_bytes allows, over HTTP JSON, HTTP binary and gRPC, a fresh server each;
and a request one row over the bound must be refused. Figures: docs/answers.md.

  python -m benchmarks.answers --max-answer-bytes 134217728  # default: pipeline_bls's bound
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness as h
from bls.contract.parameters import MAX_ANSWER_BYTES
from bls.contract.tensors import PIPELINE_NAME, PIPELINE_OUTPUTS

PROTOCOLS = ("http-json", "http-binary", "grpc")

def shm_bytes(run_triton_pid: int) -> int:
    return sum(p.stat().st_size for p in Path("/dev/shm").glob(f"triton_bls_{run_triton_pid}_*"))

def infer(server, protocol: str, data: bytes, parameters: dict) -> tuple[dict, int]:
    """(outputs by name, bytes received for them) for one request."""
    if protocol != "grpc":
        return h.http_answer(server, PIPELINE_NAME, data, True, parameters, protocol == "http-binary")
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer(PIPELINE_NAME, [h.make_input(grpcclient, data, True)],
                              parameters=parameters, client_timeout=h.REQUEST_TIMEOUT_S)
        return ({s.name: result.as_numpy(s.name) for s in PIPELINE_OUTPUTS},
                result.get_response().ByteSize())

def image_for(bound: int, detections: int, aspect: float = 4 / 3) -> tuple[bytes, int, int]:
    """A generated JPEG whose dense answer with ``detections`` masks is just under ``bound``."""
    area = (bound - 64 * detections) // detections  # the fixed outputs: < 64 B per detection
    height = int((area / aspect) ** 0.5)
    return h.scene(area // height, height, 5), height, area // height

def measure(repo: Path, protocol: str, data: bytes, parameters: dict, log: Path) -> dict:
    with h.serve(repo, log) as server:
        for _ in range(2):  # warm-up: both paths, small answers
            infer(server, protocol, data, {**parameters, "mask_format": "rle"})
        pids = {p["name"]: p["pid"] for p in h.processes(server)}
        pid, stub = pids["tritonserver"], pids[f"stub:{PIPELINE_NAME}"]
        before = {"server": h.proc_kb(pid, "status")["VmRSS"], "stub": h.proc_kb(stub, "status")["VmRSS"],
                  "shm": shm_bytes(server.pid)}
        for p in (pid, stub):
            Path(f"/proc/{p}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
        seconds, (outputs, wire) = h.timed(infer, server, protocol, data, parameters)
        return {"seconds": seconds, "masks_shape": list(outputs["masks"].shape[1:]),
                "answer_bytes": int(sum(v.nbytes for v in outputs.values() if v.dtype != object)),
                "wire_bytes": wire,
                "server_peak_delta": h.proc_kb(pid, "status")["VmHWM"] - before["server"],
                "stub_peak_delta": h.proc_kb(stub, "status")["VmHWM"] - before["stub"],
                "server_rss_before": before["server"],
                "shm_delta": shm_bytes(server.pid) - before["shm"]}

def main(argv: list[str] | None = None) -> int:
    from tritonclient.utils import InferenceServerException

    from export.repository import assemble

    p = h.parser("benchmarks.answers", __doc__, "repository", "json")
    p.add_argument("--max-answer-bytes", type=int, default=MAX_ANSWER_BYTES,
                   help=f"pipeline_bls's bound to serve with (default {MAX_ANSWER_BYTES})")
    p.add_argument("--detections", type=int, default=20, help="dense masks in the answer (default 20)")
    p.add_argument("--protocol", action="append", choices=PROTOCOLS, help="repeatable; default: all")
    args = h.parse(p, argv)
    args.min_size, args.max_size = 256, 384  # the answer's size does not depend on them
    with h.session("benchmarks.answers", argv, args, ["--detections", str(args.detections), "--proposals",
                                                      "200"]) as run:
        repo = assemble(h.model_file(run.repo.path), run.scratch / "served", {PIPELINE_NAME: (
            f'parameters {{ key: "max_answer_bytes" value {{ string_value: "{args.max_answer_bytes}" }} }} '
            'parameters { key: "monitoring_policy" value { string_value: "" } }')})
        data, height, width = image_for(args.max_answer_bytes, args.detections)
        parameters = {"mask_format": "dense", "score_threshold": 0.0, "max_detections": args.detections}
        print(f"answer: {args.detections} dense masks of {height}x{width} ({h.fmt_bytes(args.detections * height * width)}"
              f"), bound {h.fmt_bytes(args.max_answer_bytes)}")
        results = {}
        for protocol in args.protocol or PROTOCOLS:
            results[protocol] = measure(repo, protocol, data, parameters, run.scratch / "server.log")
            print(f"  {protocol}: done in {results[protocol]['seconds']:.1f} s", flush=True)
        over = image_for(args.max_answer_bytes + args.detections * (width + 64) * 2, args.detections)[0]
        with h.serve(repo, run.scratch / "server.log") as server:
            try:
                refusal = "ANSWERED (not refused)" if infer(server, "grpc", over, parameters) else ""
            except InferenceServerException as e:
                refusal = f"{e.status()}: {e.message()}"
    print(f"\n== peak memory for one answer just under max_answer_bytes = "
          f"{args.max_answer_bytes:,} ({h.fmt_bytes(args.max_answer_bytes)})")
    print(h.table(["protocol", "masks", "answer", "on the wire", "tritonserver peak +", "x answer",
                   "pipeline_bls stub peak +", "/dev/shm +", "seconds"], [
        [protocol, "{} x {}x{}".format(*r["masks_shape"]), h.fmt_bytes(r["answer_bytes"]),
         h.fmt_bytes(r["wire_bytes"]), h.fmt_bytes(r["server_peak_delta"]),
         f"{r['server_peak_delta'] / max(r['answer_bytes'], 1):.1f}",
         h.fmt_bytes(r["stub_peak_delta"]), h.fmt_bytes(r["shm_delta"]), f"{r['seconds']:.1f}"]
        for protocol, r in results.items()]))
    print(f"  tritonserver RSS before the answer: "
          f"{h.fmt_bytes(max(r['server_rss_before'] for r in results.values()))}")
    print(f"  one row over the bound: {refusal}")
    h.write_json(args.json, {"machine": run.machine, "max_answer_bytes": args.max_answer_bytes,
                             "results": results, "over_bound": refusal})
    ok = "max_answer_bytes" in refusal and all(r["masks_shape"][0] >= 1 for r in results.values())
    print(f"bound enforced and answers served: {'yes' if ok else 'NO'}")
    return 0 if ok else 1

if __name__ == "__main__":
    h.run_main(main)
