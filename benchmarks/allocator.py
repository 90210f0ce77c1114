"""Run a step-timing benchmark under a C allocator that keeps and reuses freed memory.

An optimizer step allocates parameter-sized temporaries. On CPU torch takes them from the C library's malloc,
and glibc by default maps every buffer above its mmap threshold (at most 32 MiB) afresh and returns it on free:
each such temporary then costs page faults — measured here at about 0.4 ms per MiB (a 154 MiB square root of
GPT-2's embedding-sized array: 68 ms fresh, 13.5 ms into a reused buffer), more than the arithmetic. Accelerator
steps never pay this (torch's CUDA caching allocator reuses blocks), and PyTorch's CPU performance guide
recommends an allocator that reuses memory (jemalloc, tcmalloc) for the same reason. The kernel profile times
each kernel in a loop, where its buffers are reused, so a step measured under glibc's defaults would add a cost
the cost model does not price. ``reexec()`` restarts the benchmark with glibc told to keep freed memory
(no mmap, no trimming), the environment a planned CPU run should use too; ``SKETCHPLAN_DEFAULT_MALLOC=1``
keeps glibc's defaults.
"""

from __future__ import annotations

import os
import sys

#: glibc tunables (mallopt(3)): never mmap, never return the heap top to the system, grow it in 1 GiB steps.
REUSING_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36), "MALLOC_TOP_PAD_": str(1 << 30)}


def reexec() -> None:
    """Restart this script with ``REUSING_MALLOC`` in the environment unless it is there (or opted out)."""
    if os.environ.get("SKETCHPLAN_DEFAULT_MALLOC") == "1":
        return
    if all(os.environ.get(k) == v for k, v in REUSING_MALLOC.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **REUSING_MALLOC})


def describe() -> str:
    """One sentence for a result file: which allocator settings the timings ran under."""
    if all(os.environ.get(k) == v for k, v in REUSING_MALLOC.items()):
        return ("glibc malloc told to keep freed memory (" + ", ".join(f"{k}={v}" for k, v in REUSING_MALLOC.items())
                + "; `benchmarks/allocator.py`)")
    return "glibc malloc with its defaults (fresh page-faulted buffers above 32 MiB; `benchmarks/allocator.py`)"
