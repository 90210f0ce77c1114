"""Shared by the workspace tests: a method's replayed step transients (``methods.*.workspace_bytes``) against
what torch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``, written independently of sketchplan)
counts during real steps."""

from __future__ import annotations

import os
import random

import torch


def force_float64_retry(monkeypatch) -> None:
    """Every float32 eigh and SVD fails, so every step takes the float64 retry: the high-water mark the replays
    predict (real training hits it: float32 eigh fails on the rank-deficient statistics of an embedding)."""
    def failing(fn):
        def wrapped(a, *args, **kwargs):
            if a.dtype == torch.float32:
                raise torch.linalg.LinAlgError("forced by the test")
            return fn(a, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch.linalg, "eigh", failing(torch.linalg.eigh))
    monkeypatch.setattr(torch.linalg, "svd", failing(torch.linalg.svd))


def random_shapes(vector_max: int = 200) -> tuple[int, list[tuple[int, ...]]]:
    """(seed, shapes): a matrix, a vector and an order-3 tensor of fresh random sizes (the seed is returned for
    the failure message; ``SKETCHPLAN_TEST_SEED`` fixes it, which only ``benchmarks/mutation.py`` does, so a
    mutant's verdict is reproducible)."""
    seed = random.Random(os.environ.get("SKETCHPLAN_TEST_SEED")).randrange(10**6)
    rng = random.Random(seed)
    return seed, [(rng.randint(2, 120), rng.randint(2, 90)), (rng.randint(2, vector_max),),
                  (rng.randint(2, 6), rng.randint(2, 40), rng.randint(2, 9))]


def measured_step_transients(shapes, cfg, dtype, opts, steps: int, master_weights: bool = False) -> int:
    """MemTracker's peak over ``steps`` optimizer steps of one param group of ``shapes`` (fresh random
    gradients), less what stays allocated (parameters, gradients, float32 masters with ``master_weights``, and
    the method's state layout)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from sketchplan.methods import state_layout, total_bytes
    from sketchplan.optimizers.torch import SketchplanOptimizer, group_options

    ps = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in shapes]
    opt = SketchplanOptimizer([{"params": ps, **group_options(cfg, opts)}], cfg, opts, master_weights=master_weights)
    kept = sum(p.numel() * (p.element_size() * 2 + (4 if master_weights else 0)) for p in ps)
    kept += sum(total_bytes(state_layout(tuple(p.shape), cfg, opts)) for p in ps)
    measured = 0
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn_like(p)
        mt = MemTracker()
        mt.track_external(*ps, *[p.grad for p in ps], opt)
        with mt:
            opt.step()
        measured = max(measured, sum(s["Total"] for s in mt.get_tracker_snapshot("peak").values()) - kept)
    return measured
