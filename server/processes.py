"""What a running server is made of, read from /proc and /dev/shm: its process group
(run_triton.sh, tritonserver, the Python models' stubs), what each uses, and the Python
backend's shared-memory regions. The launcher stops by it, the watchdog finds dead stubs by
it, the tests and benchmarks measure with it.
"""

from __future__ import annotations

import os
from pathlib import Path

STUB = b"triton_python_backend_stub"


def live_processes():
    """Yield (pid, ppid, pgrp) of every process that is not a zombie, from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ')'
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z":
            yield int(stat.parent.name), int(fields[1]), int(fields[2])


def live_members(pgid: int) -> list[int]:
    """List the pids of process group ``pgid`` that are not zombies."""
    return [pid for pid, _, group in live_processes() if group == pgid]


def stubs(server_pid: int) -> dict[str, set[int]]:
    """Find the live stub processes of ``server_pid``, by model name.

    The model's name is the model directory of the model.py each stub runs.
    """
    found: dict[str, set[int]] = {}
    for pid, ppid, _ in live_processes():
        if ppid != server_pid:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if argv and argv[0].endswith(STUB) and len(argv) > 1:
            model = Path(argv[1].decode()).parent.parent.name
            found.setdefault(model, set()).add(pid)
    return found


def stub_regions(pids) -> dict[int, str]:
    """Read the shared-memory region of each live stub in ``pids``, by pid.

    A stub's command line is: stub, model.py, region name, ... (python_backend's
    stub_launcher.cc); the name is a per-instance UUID under the server's prefix.
    """
    found = {}
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if len(argv) > 2 and argv[0].endswith(STUB):
            found[pid] = argv[2].decode()
    return found


def shm_regions(run_triton_pid: int) -> list[Path]:
    """List the Python backend's shared-memory regions of one server in /dev/shm.

    run_triton.sh names them triton_bls_<its pid>_* (its process group id).
    """
    return list(Path("/dev/shm").glob(f"triton_bls_{run_triton_pid}_*"))


def remove_shm_regions(run_triton_pid: int) -> list[Path]:
    """Delete the Python backend's shared-memory regions of a server that is gone.

    A server that was killed (or whose stubs were) leaves them behind in /dev/shm,
    holding memory until removed.

    Returns:
        The paths removed.
    """
    removed = shm_regions(run_triton_pid)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def proc_kb(pid: int, name: str) -> dict[str, int]:
    """Read the 'Key: N kB' lines of /proc/<pid>/<name> (status, smaps_rollup) as {key: bytes}."""
    lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
    fields = (line.partition(":") for line in lines)
    return {k: int(v.split()[0]) * 1024 for k, _, v in fields if v.endswith("kB")}


def processes(run_triton_pid: int, tritonserver_pid: int | None) -> list[dict]:
    """Read what each live process of a server uses now.

    Returns:
        Per process: pid, name ("run_triton.sh", "stub:<model>" or its comm, e.g.
        "tritonserver"; stubs are named once tritonserver_pid is known), cpu_s (user +
        system), and proc_kb() of status and smaps_rollup
        (VmRSS, VmHWM, RssAnon, RssShmem, Pss, ...).
    """
    names = {pid: f"stub:{m}" for m, pids in stubs(tritonserver_pid).items() for pid in pids}
    names[run_triton_pid] = "run_triton.sh"
    out = []
    for pid in sorted(live_members(run_triton_pid)):
        try:
            fields = proc_kb(pid, "status") | proc_kb(pid, "smaps_rollup")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue  # it ended while being read
        cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        out.append(fields | {"pid": pid, "cpu_s": cpu_s, "name": names.get(pid, comm)})
    return out


def shm_usage(run_triton_pid: int) -> dict:
    """Measure a server's /dev/shm regions: files, apparent and allocated bytes."""
    sizes = [p.stat() for p in shm_regions(run_triton_pid)]
    return {"files": len(sizes), "apparent": sum(s.st_size for s in sizes),
            "allocated": sum(s.st_blocks * 512 for s in sizes)}
