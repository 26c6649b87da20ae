"""Process-wide settings of the models that run the pipeline's steps: ``configure_process``;
and what a stub can see of its model's other instances (``live_instances``).

Those models are pipeline_bls, preprocess and postprocess. Keeping freed memory: a
request allocates a few large blocks (the decoded image, PIL's 4-byte copy, the resized
image, the model input; their size for a 1080p photo, and what faulting them in costs:
docs/benchmarks.md, 'Measured: the pipeline at GPU speed'). glibc's malloc serves blocks
that large with mmap and unmaps them when freed, and a worker thread's arena trims its
heap, so the next request faults every page in again and the kernel zeroes it. Raising
the mmap and trim thresholds and using one arena keeps that memory for reuse; the process
then holds its peak working set (bounded by the thresholds: a block over
``MMAP_THRESHOLD`` is still mapped and returned).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Mapping

from bls.contract.parameters import RESIZE_TORCH

MMAP_THRESHOLD = 64 * 1024 * 1024  # blocks below this come from the heap, and are reused
TRIM_THRESHOLD = 256 * 1024 * 1024  # free memory kept at the heap's top
ARENAS = 1  # worker threads share the main heap (a thread's own heap is at most 64 MB)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory, process-wide.

    Call it once, before the worker threads start.

    Returns:
        True if every setting took; False where it cannot (not glibc): nothing changes then.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_ARENA_MAX, ARENAS)))


def configure_process(values: Mapping) -> None:
    """Apply a model's process-wide config values (bls/contract/parameters.py).

    Keeps freed memory if asked; with ``resize`` "torch", sets torch to one thread per
    call, so each worker thread resizes one image on one core (torch's default, a thread
    per core per call, oversubscribes). Call it in ``initialize``, before any worker
    thread starts.

    Args:
        values: the model's parsed config values, with ``keep_freed_memory`` and
            optionally ``resize``.
    """
    if values["keep_freed_memory"] == "true":
        keep_freed_memory()
    if values.get("resize") == RESIZE_TORCH:
        import torch

        torch.set_num_threads(1)


def _argv(pid: int | str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone meanwhile
        return []


def live_instances() -> int | None:
    """Count the live stub processes of this process's model on this server, itself included.

    Those are the processes with this one's parent (tritonserver) and this one's
    model.py: python_backend starts a stub per instance with the command line stub,
    model.py, shared-memory region, ... (stub_launcher.cc). A stub that died is a zombie
    until tritonserver reaps it, and is not counted. None when this process is not a
    stub (bls.testing's double, a script) or /proc cannot tell.
    """
    mine, parent = _argv("self"), os.getppid()
    if len(mine) < 2 or not mine[0].endswith(b"triton_python_backend_stub"):
        return None
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == parent and _argv(stat.parent.name)[:2] == mine[:2]:
            count += 1
    return max(count, 1)


def configured_instances(model_config: Mapping) -> int | None:
    """The number of instances a config asks for, where the config alone says: its
    instance groups' counts, a KIND_GPU group's times its listed GPUs. None where it
    cannot tell (a KIND_GPU group without a GPU list: one instance per visible GPU)."""
    total = 0
    for group in model_config.get("instance_group") or [{"count": 1}]:
        count = int(group.get("count", 1))
        if group.get("kind", "KIND_CPU") == "KIND_GPU":
            if not group.get("gpus"):
                return None
            count *= len(group["gpus"])
        total += count
    return total
