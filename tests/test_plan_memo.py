"""The planner's memos give the answers the plain computations give.

- ``methods.transients.replayed``: a memoised replay step applied to a counter at any state leaves the same
  (live bytes, high-water mark) as running the step itself (random steps, random starting states);
- layouts and kernel calls come as fresh lists (a caller editing its list cannot change the next answer);
- ``make_plan`` pauses the cyclic garbage collector only while it runs, also when it raises.
"""

from __future__ import annotations

import gc
import random

import pytest

from sketchplan.errors import UserError
from sketchplan.methods import MethodConfig, OptimizerDefaults, kernel_calls, state_layout
from sketchplan.methods.transients import Live, replayed
from sketchplan.planner.analysis import ModelSpec, ParamSpec
from sketchplan.planner.make import make_plan


def _program(seed: int) -> list[tuple[str, int]]:
    """A random replay: allocations, frees of earlier allocations, spikes and scratch."""
    rng = random.Random(seed)
    ops, held = [], []
    for _ in range(rng.randrange(1, 40)):
        kind = rng.choice(["alloc", "alloc", "free", "spike", "scratch"])
        if kind == "free" and held:
            ops.append(("free", held.pop(rng.randrange(len(held)))))
        elif kind in ("spike", "scratch"):
            ops.append((kind, rng.randrange(0, 10**9)))
        else:
            n = rng.randrange(0, 10**9)
            held.append(n)
            ops.append(("alloc", n))
    return ops


def _run(live: Live, seed: int) -> int:
    for kind, n in _program(seed):
        getattr(live, kind)(n)
    return seed * 7


#: one memo for both parametrisations: an answer recorded with scratch counted must not serve one without
_step = replayed(_run)


@pytest.mark.parametrize("scratch", [True, False])
def test_replayed_step_leaves_the_counter_as_the_step_itself(scratch):
    rng = random.Random()
    for _ in range(200):
        seed = rng.randrange(30)  # few distinct steps, so most calls hit the memo
        plain, memo = Live(scratch), Live(scratch)
        start_now, start_peak = rng.randrange(0, 10**10), rng.randrange(0, 10**10)
        plain.now, plain.peak = start_now, max(start_now, start_peak)
        memo.now, memo.peak = start_now, max(start_now, start_peak)
        assert _run(plain, seed) == _step(memo, seed)
        assert (memo.now, memo.peak) == (plain.now, plain.peak)


def test_layouts_and_calls_come_as_fresh_lists():
    rng = random.Random()
    shape = (rng.randrange(2, 300), rng.randrange(2, 300))
    cfg, opts = MethodConfig(method="sketchy", rank=rng.choice([4, 8])), OptimizerDefaults()
    first = state_layout(shape, cfg, opts)
    first.clear()
    assert state_layout(shape, cfg, opts) and state_layout(list(shape), cfg, opts) == state_layout(shape, cfg, opts)
    calls = kernel_calls(shape, cfg, opts)
    calls.append(None)
    assert None not in kernel_calls(shape, cfg, opts)


def test_make_plan_restores_the_garbage_collector():
    spec = ModelSpec(params=[ParamSpec(name="w", shape=(64, 32), dtype="float32", trainable=True)])
    assert gc.isenabled()
    make_plan(spec, "64MiB")
    assert gc.isenabled()
    with pytest.raises(UserError):
        make_plan(spec, "1KiB")  # below what the parameters alone need
    assert gc.isenabled()
    gc.disable()
    try:
        make_plan(spec, "64MiB")
        assert not gc.isenabled()  # a caller's own choice is left as it was
    finally:
        gc.enable()
