"""python -m benchmarks.answers [--max-answer-bytes N]: peak memory of tritonserver, pipeline_bls's
stub and /dev/shm for the largest dense answer the bound allows, over HTTP JSON, HTTP binary and
gRPC (a fresh server each); an image one row larger must be refused. Figures: docs/answers.md."""

from pathlib import Path

import tritonclient.grpc as grpcclient

from benchmarks import harness as h
from bls.contract.parameters import MAX_ANSWER_BYTES
from bls.contract.tensors import PIPELINE_NAME
from export.repository import assemble, parameters_override
from server.processes import proc_kb, shm_usage

DETECTIONS = 20
PARAMETERS = {"mask_format": "dense", "score_threshold": 0.0, "max_detections": DETECTIONS}
WATCHED = {"tritonserver": "server", f"stub:{PIPELINE_NAME}": "stub"}  # process -> key


def infer(server, protocol: str, data: bytes, params: dict) -> tuple[int, int]:
    """(bytes of the masks, bytes received) of one request."""
    if protocol != "grpc":
        out, wire = h.http_answer(server, PIPELINE_NAME, data, True, params, "binary" in protocol)
        return out["masks"].nbytes, wire
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer(PIPELINE_NAME, [h.make_input(grpcclient, data, True)],
                              parameters=params, client_timeout=h.REQUEST_TIMEOUT_S)
    return result.as_numpy("masks").nbytes, result.get_response().ByteSize()


def measure(repo: Path, protocol: str, data: bytes, over: bytes) -> dict:
    """On a fresh server: the peaks above before for ``data``'s answer; ``over`` refused?"""
    with h.serve(repo) as server:
        for _ in range(2):  # warm-up, small answers
            infer(server, protocol, data, PARAMETERS | {"mask_format": "rle"})
        pids = {WATCHED[p["name"]]: p["pid"] for p in server.processes() if p["name"] in WATCHED}
        before = {k: proc_kb(pid, "status")["VmRSS"] for k, pid in pids.items()}
        shm = shm_usage(server.pid)["apparent"]
        for pid in pids.values():
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
        seconds, (masks, wire) = h.timed(infer, server, protocol, data, PARAMETERS)
        r = {f"{k}_peak": proc_kb(pid, "status")["VmHWM"] - before[k] for k, pid in pids.items()}
        r |= {"shm": shm_usage(server.pid)["apparent"] - shm, "seconds": seconds, "wire": wire,
              "masks": masks, "server_before": before["server"], "over_bound": "ANSWERED"}
        try:
            infer(server, protocol, over, PARAMETERS)
        except (grpcclient.InferenceServerException, RuntimeError) as e:  # RuntimeError: HTTP
            r["over_bound"] = str(e)
    return r


def main(argv: list[str] | None = None) -> int:
    p = h.parser("benchmarks.answers", __doc__, "repository", "json")
    p.add_argument("--max-answer-bytes", type=int, default=MAX_ANSWER_BYTES)
    args = h.parse(p, argv)
    bound, args.min_size, args.max_size = args.max_answer_bytes, 256, 384  # sizes: no matter
    export = ["--detections", str(DETECTIONS), "--proposals", "200"]
    with h.session("benchmarks.answers", argv, args, export) as run:
        repo = assemble(h.model_file(run.repo.path), run.scratch / "served", {
            PIPELINE_NAME: parameters_override(max_answer_bytes=bound, monitoring_policy="")})
        area = (bound - 64 * DETECTIONS) // DETECTIONS  # the other outputs: < 64 B per detection
        height = int((area * 3 / 4) ** 0.5)  # a 4:3 image whose dense answer is just under bound
        width = area // height
        data, over = h.scene(width, height, 5), h.scene(width, height + 1, 5)  # over: a row more
        results = {p: measure(repo, p, data, over) for p in ("http-json", "http-binary", "grpc")}
    print(f"\n== peaks, {DETECTIONS} dense masks {height}x{width}, bound {bound:,} B\n" + h.table(
        ["protocol", "on the wire", "tritonserver before", "peak +", "x masks", "stub peak +",
         "/dev/shm +", "seconds", "one row over the bound"],
        [[p, *map(h.fmt_bytes, (r["wire"], r["server_before"], r["server_peak"])),
          f"{r['server_peak'] / r['masks']:.1f}", *map(h.fmt_bytes, (r["stub_peak"], r["shm"])),
          f"{r['seconds']:.1f}", r["over_bound"][:90]] for p, r in results.items()]))
    h.write_json(args.json, {"machine": run.machine, "max_answer_bytes": bound, "results": results})
    ok = all("max_answer_bytes" in r["over_bound"] and r["masks"] for r in results.values())
    print(f"bound enforced over every protocol and answers served: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    h.run_main(main)
