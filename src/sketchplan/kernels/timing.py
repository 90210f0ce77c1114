"""The timing harness: median seconds of a kernel call, with warm-up and device synchronisation.

``median_seconds(run, ...)`` calls ``run()`` ``warmup`` times untimed (caches, jit compilation, allocator),
then times repetitions until ``min_reps`` are done and ``budget_s`` is spent (at most ``max_reps``) and returns
the median and the count. ``run`` returns the time of one call in seconds: ``torch_runner`` wraps a torch call
with ``torch.cuda.Event`` timing on CUDA (events around the call, synchronised after) and ``perf_counter`` on
CPU; ``jax_runner`` blocks until the result is ready.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(run: Callable[[], float], warmup: int = 1, min_reps: int = 3, max_reps: int = 15,
                   budget_s: float = 0.5) -> tuple[float, int]:
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        times.append(run())
    return statistics.median(times), len(times)


def torch_runner(fn: Callable[[], object], device: str) -> Callable[[], float]:
    """One timed call of ``fn`` on a torch ``device`` (CUDA events, or wall clock on CPU)."""
    if device.startswith("cuda"):
        import torch

        def run() -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        return run

    def run_cpu() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return run_cpu


def jax_runner(fn: Callable[[], object]) -> Callable[[], float]:
    """One timed call of a JAX ``fn`` (dispatch to completion: ``block_until_ready`` on its result)."""
    import jax

    def run() -> float:
        t = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - t
    return run
