"""python -m server.watchdog: reload a Python model whose stub process died.

Triton 2.51's Python backend does not restart a dead stub: every request to that model
fails with "Stub process '<model>_0_0' is not healthy." until the model is reloaded.
run_triton.sh starts this beside the embedded server. It watches the server's stub
processes and, when one vanishes, unloads and loads its model through the
model-repository API, which the server restricts to a header only run_triton.sh and
this process know (TRITON_ADMIN_HEADER / TRITON_ADMIN_KEY in the environment), so
clients still cannot load or unload models.

While a model is reloaded, its requests fail with the not-healthy message (or "not
found" during the moment it is unloaded); the other models keep serving.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

from server.processes import stubs


def _post(url: str, header: str, key: str, timeout: float) -> None:
    request = urllib.request.Request(url, data=b"{}", method="POST",
                                     headers={header: key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        reply.read()


def reload(base_url: str, model: str, header: str, key: str, timeout: float = 600) -> None:
    """Unload and load ``model`` (a plain load of an unchanged model is a no-op).

    Raises:
        urllib.error.URLError: the server refused or did not answer.
    """
    _post(f"{base_url}/v2/repository/models/{model}/unload", header, key, timeout)
    _post(f"{base_url}/v2/repository/models/{model}/load", header, key, timeout)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log(message: str) -> None:
    """Write ``message`` to stderr, prefixed as run_triton.sh's watchdog."""
    print(f"run_triton.sh watchdog: {message}", file=sys.stderr, flush=True)


def watch(base_url: str, server_pid: int, header: str, key: str, interval: float = 1.0) -> None:
    """Reload each model whose stub dies, until the server exits.

    Args:
        base_url: the server's HTTP base URL, http://host:port.
        server_pid: tritonserver's pid.
        header, key: the admin header and its value, for the model-repository API.
        interval: seconds between looks at the stub processes.
    """
    known = stubs(server_pid)
    log(f"watching {sum(len(p) for p in known.values())} stub processes of "
        f"{len(known)} models (server pid {server_pid})")
    while alive(server_pid):
        time.sleep(interval)
        now = stubs(server_pid)
        dead = {model: pids - now.get(model, set()) for model, pids in known.items()}
        for model, gone in dead.items():
            if not gone:
                continue
            log(f"stub of model '{model}' died (pid {', '.join(map(str, sorted(gone)))}); "
                "reloading it")
            start = time.monotonic()
            try:
                reload(base_url, model, header, key)
                log(f"model '{model}' reloaded in {time.monotonic() - start:.1f} s")
            except (urllib.error.URLError, OSError) as e:
                if not alive(server_pid):
                    return
                log(f"reloading model '{model}' failed: {e}; will retry")
                continue
        if any(dead.values()):
            now = stubs(server_pid)
        # Models whose stubs all failed to come back stay in `known`, so they are retried.
        known = {model: now.get(model) or known[model] for model in known | now}


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m server.watchdog``; returns its exit status."""
    p = argparse.ArgumentParser(prog="python -m server.watchdog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the server's HTTP base URL, http://host:port")
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    args = p.parse_args(argv)
    header, key = os.environ.get("TRITON_ADMIN_HEADER"), os.environ.get("TRITON_ADMIN_KEY")
    if not header or not key:
        p.error("TRITON_ADMIN_HEADER and TRITON_ADMIN_KEY must be set in the environment")
    try:
        watch(args.url.rstrip("/"), args.server_pid, header, key, args.interval)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
