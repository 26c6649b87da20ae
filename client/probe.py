"""python -m client probe: is pipeline_bls answering? The health probe for operators and Kubernetes.

It sends pipeline_bls one request with the parameter probe=true over HTTP, in Triton's
JSON protocol, and waits at most --deadline seconds. pipeline_bls answers a probe empty,
from its own stub process, without calling mask_rcnn or monitoring, and refuses it
UNAVAILABLE while the stub of another of its instances is dead. So the probe fails (exit
status 1, the reason on stderr) on a dead pipeline_bls stub ("Stub process ... is not
healthy.", which Triton 2.51's liveness and readiness endpoints never notice), a stub that
does not answer in time, or a server that does not answer; not because mask_rcnn or
monitoring are slow.

  python -m client probe --url 127.0.0.1:8000 --deadline 5
  python3 probe.py --url 127.0.0.1:8000     # this file alone: the Helm chart's liveness probe

Only the Python standard library, so that this one file runs wherever Python 3 does (the
chart mounts a copy, deploy/triton-maskrcnn/files/probe.py, kept identical by the tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

# bls/contract/tensors.py PIPELINE_NAME, PIPELINE_INPUT and an output (tests keep them so).
MODEL, INPUT, OUTPUT = "pipeline_bls", "image", "image_size"


def probe(url: str, deadline_s: float = 5.0, model: str = MODEL) -> tuple[bool, str]:
    """Send one probe to ``model`` at ``url`` (host:port of Triton's HTTP endpoint).

    Returns:
        (whether it was answered in time, a line saying what happened).
    """
    body = json.dumps({"inputs": [{"name": INPUT, "shape": [1, 1], "datatype": "BYTES",
                                   "data": [""]}],
                       "parameters": {"probe": True}, "outputs": [{"name": OUTPUT}]}).encode()
    request = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", body,
                                     {"Content-Type": "application/json"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=deadline_s) as reply:
            json.loads(reply.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", "")
        except (ValueError, OSError):
            reason = ""
        return False, f"{model} refused the probe: HTTP {e.code} {reason}".rstrip()
    except (OSError, ValueError) as e:  # URLError, timeouts, refused, a broken answer
        reason = getattr(e, "reason", None) or e
        return False, f"no answer from {model} at {url} within {deadline_s:g} s: {reason}"
    return True, f"{model} answered the probe in {(time.monotonic() - start) * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    """Run the probe; exit status 0 when answered, 1 otherwise."""
    p = argparse.ArgumentParser(prog="python -m client probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP HOST:PORT")
    p.add_argument("--deadline", type=float, default=5.0,
                   help="seconds to wait for the answer (default 5)")
    p.add_argument("--model", default=MODEL)
    args = p.parse_args(argv)
    ok, line = probe(args.url.split("://", 1)[-1], args.deadline, args.model)
    print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
