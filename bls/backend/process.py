"""Process-wide settings of the models that run the pipeline's steps: ``configure_process``.

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
