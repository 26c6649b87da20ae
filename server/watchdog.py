"""python -m server.watchdog: reload a Python model whose stub process died, in place.

Triton 2.51's Python backend does not restart a dead stub: every request to that model
fails with "Stub process '<model>_0_0' is not healthy." until the model is reloaded.
run_triton.sh starts this beside the embedded server. It looks at the server's stub
processes every ``interval`` seconds (0.25) and, when one has died:

- reloads its model in place: a load of the model with its own config as an override
  (the model-repository API, restricted to a header only run_triton.sh and this process
  know: TRITON_ADMIN_HEADER / TRITON_ADMIN_KEY, so clients still cannot load or unload),
  its parameter ``watchdog_reload`` counting the reloads so that each config differs.
  Triton builds the new instance while the model keeps its name, then swaps (measured
  on 2.51: about 1.5 s); requests meanwhile get the backend's own INTERNAL "Stub process
  ... is not healthy." within a second. An unload and load, as before, answered
  NOT_FOUND ("unknown model") during the gap, which tells a client the model does not
  exist. A plain load of an unchanged model does nothing.
- removes the dead stub's shared-memory region from /dev/shm (its name is in the stub's
  command line, a per-instance UUID, so no other instance's): Triton 2.51 keeps the
  dead instance (and its mapping of the region) until the server exits when the stub
  died with requests in it; the region's name goes at once, its memory with the server.

The requests that were in the stub when it died are answered by the backend itself
(pipeline_bls's ``execute`` returns only once its batch is answered: bls/orchestration/
orchestrator.py). The dead stub stays a zombie child of tritonserver, which only
tritonserver can reap (it does when the server exits).

Exit status: 0, or DEATHS_SEEN (10) when a stub died while it watched; run_triton.sh's
stop then says that a dead stub's instance is what tritonserver still waited for (its
stop, in embedded mode, never waits out the exit timeout, dead stub or not).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bls.contract.parameters import WATCHDOG_RELOAD
from server.processes import stub_regions, stubs

DEATHS_SEEN = 10


def _request(url: str, header: str, key: str, timeout: float, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={header: key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return reply.read()


def reload(base_url: str, model: str, header: str, key: str, timeout: float = 600) -> int:
    """Load ``model`` again with its own config, which makes Triton reload it in place.

    The config's parameter ``watchdog_reload`` (a deployment key every model of the
    project passes over, bls/contract/parameters.py) counts the reloads: a load whose
    config equals the loaded one does nothing (measured: the second reload of a model
    left its dead stubs dead), so each reload's config differs from the last.

    Returns:
        The reload's count.

    Raises:
        urllib.error.URLError: the server refused or did not answer.
    """
    config = json.loads(_request(f"{base_url}/v2/models/{model}/config", header, key, timeout))
    parameters = config.setdefault("parameters", {})
    count = int(parameters.get(WATCHDOG_RELOAD, {}).get("string_value") or 0) + 1
    parameters[WATCHDOG_RELOAD] = {"string_value": str(count)}
    body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
    _request(f"{base_url}/v2/repository/models/{model}/load", header, key, timeout, body)
    return count


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


def remove_region(name: str) -> int:
    """Unlink the shared-memory region ``name`` from /dev/shm; its size in bytes (0: gone)."""
    path = Path("/dev/shm") / name
    try:
        size = path.stat().st_blocks * 512
        path.unlink()
        return size
    except FileNotFoundError:
        return 0


class Watchdog:
    """Reload each model whose stub dies, until the server exits.

    Args:
        base_url: the server's HTTP base URL, http://host:port.
        server_pid: tritonserver's pid.
        header, key: the admin header and its value, for the model-repository API.
        interval: seconds between looks at the stub processes.
    """

    def __init__(self, base_url: str, server_pid: int, header: str, key: str,
                 interval: float = 0.25):
        self.base_url, self.server_pid = base_url, server_pid
        self.header, self.key, self.interval = header, key, interval
        self.deaths = 0
        self.regions: dict[int, str] = {}  # stub pid -> its shared-memory region

    def run(self) -> None:
        known = self._look()
        log(f"watching {sum(len(p) for p in known.values())} stub processes of "
            f"{len(known)} models every {self.interval:g} s (server pid {self.server_pid})")
        while alive(self.server_pid):
            time.sleep(self.interval)
            now = self._look()
            dead = {model: pids - now.get(model, set()) for model, pids in known.items()}
            for model, gone in dead.items():
                if gone and not self._recover(model, gone):
                    if not alive(self.server_pid):
                        return
            if any(dead.values()):
                now = self._look()
            # Models whose stubs all failed to come back stay in `known`: retried.
            known = {model: now.get(model) or known[model] for model in known | now}

    def _look(self) -> dict[str, set[int]]:
        found = stubs(self.server_pid)
        self.regions |= stub_regions(set().union(*found.values()) - set(self.regions))
        return found

    def _recover(self, model: str, gone: set[int]) -> bool:
        """Reload ``model`` and remove the dead stubs' regions; False when the reload failed."""
        self.deaths += len(gone)
        log(f"stub of model '{model}' died (pid {', '.join(map(str, sorted(gone)))}); "
            "reloading it in place")
        start = time.monotonic()
        try:
            reload(self.base_url, model, self.header, self.key)
        except (urllib.error.URLError, OSError, ValueError) as e:
            log(f"reloading model '{model}' failed: {e}; will retry")
            self.deaths -= len(gone)
            return False
        removed = sum(remove_region(self.regions.pop(pid)) for pid in gone if pid in self.regions)
        log(f"model '{model}' reloaded in {time.monotonic() - start:.1f} s; the dead stub's "
            f"shared-memory region removed ({removed / 2**20:.0f} MiB)")
        return True


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m server.watchdog``; returns its exit status (DEATHS_SEEN: stubs died)."""
    p = argparse.ArgumentParser(prog="python -m server.watchdog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the server's HTTP base URL, http://host:port")
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.25)
    args = p.parse_args(argv)
    header, key = os.environ.get("TRITON_ADMIN_HEADER"), os.environ.get("TRITON_ADMIN_KEY")
    if not header or not key:
        p.error("TRITON_ADMIN_HEADER and TRITON_ADMIN_KEY must be set in the environment")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # run_triton.sh's stop
    watchdog = Watchdog(args.url.rstrip("/"), args.server_pid, header, key, args.interval)
    try:
        watchdog.run()
    except KeyboardInterrupt:
        pass
    return DEATHS_SEEN if watchdog.deaths else 0


if __name__ == "__main__":
    sys.exit(main())
