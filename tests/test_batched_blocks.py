"""Kernels batched across the tensors of a param group (``methods.batching``, ``MatrixRule.step``): the same
update as stepping tensor by tensor, fewer kernel calls, the batches derived by hand, and a replayed step peak that
MemTracker confirms and that ``auto`` never raises."""

from __future__ import annotations

import random

import pytest
import torch
from replay import force_float64_retry, measured_step_transients

from sketchplan.methods import METHOD_MODULES, MethodConfig, OptimizerDefaults, clear_caches, group_workspace_bytes
from sketchplan.methods.batching import Batch, Member, group_batches
from sketchplan.optimizers.torch import SketchplanOptimizer, group_options
from sketchplan.optimizers.torch import shampoo as torch_shampoo
from sketchplan.optimizers.torch import sketchy as torch_sketchy

CASES = [
    (MethodConfig(method="sketchy", rank=5, block_size=16), OptimizerDefaults(fd_variant="svd", betas=(0.9, 0.99))),
    (MethodConfig(method="sketchy", rank=4), OptimizerDefaults(fd_variant="auto", merge_dims=1)),
    (MethodConfig(method="sketchy", rank=6, graft="adafactor"),
     OptimizerDefaults(fd_variant="subspace", stats_every=2)),
    (MethodConfig(method="blocked_shampoo", block_size=16), OptimizerDefaults(precondition_frequency=2)),
    # a dimension above max_precond_dim: that tensor falls back to its graft (no factors, no batch)
    (MethodConfig(method="shampoo", graft="sgd"), OptimizerDefaults(precondition_frequency=3, max_precond_dim=60,
                                                                    start_preconditioning_step=1)),
]


def _shapes(rng: random.Random) -> list[tuple[int, ...]]:
    """Tensors that share factor sizes (a matrix, its transpose, a wider one with the same rows, a vector of the
    row size, an order-3 tensor with those rows) next to one that shares none and a scalar (no factors: the graft
    alone), all of fresh random sizes (each matrix above ``merge_dims`` = 1024 entries, so it stays a matrix)."""
    a, b = rng.randint(33, 60), rng.randint(33, 60)
    return [(a, b), (b, a), (a, b + rng.randint(1, 20)), (a,), (a, 2, 3), (rng.randint(61, 70), rng.randint(61, 70)),
            ()]


def _run(shapes, cfg, opts, seed, steps=5, scales=None):
    """Parameters after ``steps`` float64 steps on fresh random gradients (tensor i's times ``scales[i]``), and the
    kernel calls made."""
    calls = [0]

    def counting(fn):
        def run(*a, **k):
            calls[0] += 1
            return fn(*a, **k)
        return run

    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    opt = SketchplanOptimizer([{"params": ps, **group_options(cfg, opts)}], cfg, opts)
    with pytest.MonkeyPatch.context() as mp:
        for module, name in ((torch_sketchy, "fd_update"), (torch_shampoo, "eigh_power"),
                             (torch_shampoo, "symmetric_power")):
            mp.setattr(module, name, counting(getattr(module, name)))
        for _ in range(steps):
            for i, p in enumerate(ps):
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) * (scales[i] if scales else 1.0)
            opt.step()
    return [p.detach() for p in ps], calls[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].label() if isinstance(c, tuple) else str(c))
def test_batched_step_is_the_tensor_by_tensor_step_with_fewer_calls(case):
    """A wrong offset, axis, stacking order or a statistic updated twice (or not at all) changes the parameters;
    the call counts show the batches did share calls."""
    cfg, opts = case
    seed = random.randrange(10**6)
    shapes = _shapes(random.Random(seed))
    # float64 and a ridge that keeps the roots well conditioned: rounding differences are not amplified by the
    # (rank-deficient statistics') tiny eigenvalues, so any difference beyond 1e-10 is a wrong update
    opts = opts.model_copy(update={"state_dtype": "float64", "shampoo_eps": 1e-3})
    ref, ref_calls = _run(shapes, cfg, opts.model_copy(update={"batch_blocks": "none"}), seed)
    for mode in ("auto", "all"):
        got, calls = _run(shapes, cfg, opts.model_copy(update={"batch_blocks": mode}), seed)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12, msg=lambda m: f"{seed} {shapes} {mode}: {m}")
        if mode == "all":
            assert calls < ref_calls, (seed, shapes, calls, ref_calls)


#: Planted failure: a decomposition whose input holds an entry above this raises, as LAPACK does on a matrix it
#: cannot factor. Only the tensor whose gradients are ``POISON`` times the others' has such inputs.
REFUSED_ABOVE, POISON = 1e9, 1e10


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: c[0].label() + " " + c[1].fd_variant)
def test_a_failing_member_keeps_only_its_own_state_as_tensor_by_tensor(case, monkeypatch):
    """Tensor 0's statistics make every eigh and SVD of them raise (in float64 too): stepping tensor by tensor it
    alone keeps its sketch or root. Batched, the stack holding it fails as a whole, and the per-member retry must
    give every other member its update: a stack that kept every member's state (or a retry that skipped or
    mis-sliced members) changes their parameters. The count of refused calls shows the stack did fail."""
    cfg, opts = case
    seed = random.randrange(10**6)
    shapes = _shapes(random.Random(seed))
    opts = opts.model_copy(update={"state_dtype": "float64", "shampoo_eps": 1e-3})
    refused = [0]

    def refusing(real):
        def run(a, *args, **kw):
            if bool((a.abs() > REFUSED_ABOVE).any()):
                refused[0] += 1
                raise torch.linalg.LinAlgError("planted: this matrix cannot be factored")
            return real(a, *args, **kw)
        return run

    monkeypatch.setattr(torch.linalg, "eigh", refusing(torch.linalg.eigh))
    monkeypatch.setattr(torch.linalg, "svd", refusing(torch.linalg.svd))
    scales = [POISON] + [1.0] * (len(shapes) - 1)
    ref, _ = _run(shapes, cfg, opts.model_copy(update={"batch_blocks": "none"}), seed, scales=scales)
    alone = refused[0]
    assert alone > 0
    refused[0] = 0
    got, _ = _run(shapes, cfg, opts.model_copy(update={"batch_blocks": "all"}), seed, scales=scales)
    assert refused[0] > alone, (refused[0], alone)  # the stacks with tensor 0 failed, then its own retries
    for i, (r, g) in enumerate(zip(ref, got)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12, msg=lambda m: f"{seed} {shapes} tensor {i}: {m}")


def test_batches_by_hand():
    """Sketchy rank 4 on unblocked (8, 12), (12, 8), (8, 8) and (20,): the problems (d, k, m) are (8, 4, 12) for
    axis 0 of the first and axis 1 of the second, (12, 4, 8) for the other two axes, (8, 4, 8) for both axes of
    the square, and (20, 4, 1) for the vector alone."""
    clear_caches()
    cfg = MethodConfig(method="sketchy", rank=4)
    shapes = ((8, 12), (12, 8), (8, 8), (20,))
    every = OptimizerDefaults(batch_blocks="all", merge_dims=1)  # (merging would make (8, 12) a 96-vector)
    got = group_batches(METHOD_MODULES["sketchy"], shapes, ("float32",) * 4, (True,) * 4, cfg, every)
    assert set(got) == {
        Batch((8, 4, 12), (Member(0, 0, 0, 1), Member(1, 0, 1, 1))),
        Batch((12, 4, 8), (Member(0, 0, 1, 1), Member(1, 0, 0, 1))),
        Batch((8, 4, 8), (Member(2, 0, 0, 1), Member(2, 0, 1, 1))),
        Batch((20, 4, 1), (Member(3, 0, 0, 1),)),
    }
    # a tensor not due this step takes no part
    got = group_batches(METHOD_MODULES["sketchy"], shapes, ("float32",) * 4, (True, False, True, True), cfg,
                        every)
    assert Batch((8, 4, 12), (Member(0, 0, 0, 1),)) in got and all(m.tensor != 1 for b in got for m in b.members)
    # Shampoo: roots keyed by (d, order); blocked at 4, a (8, 12) tensor has six 4 × 4 blocks, 12 roots of order 2
    blocked = MethodConfig(method="blocked_shampoo", block_size=4)
    got = group_batches(METHOD_MODULES["blocked_shampoo"], ((8, 12), (4,)), ("float32",) * 2, (True, True), blocked,
                        every)
    assert set(got) == {Batch((4, 2), (Member(0, 0, 0, 6), Member(0, 0, 1, 6))), Batch((4, 1), (Member(1, 0, 0, 1),))}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].label() if isinstance(c, tuple) else str(c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_batched_group_peak_is_replayed_and_auto_never_raises_it(case, dtype, monkeypatch):
    """MemTracker's step peak (float64 eigh retries forced: the replays' worst case) equals the group's replay
    up to its 16-byte scalar allowance in every mode; ``auto``'s replayed peak is at most ``none``'s."""
    force_float64_retry(monkeypatch)
    cfg, opts = case
    seed = random.randrange(10**6)
    shapes = _shapes(random.Random(seed))
    dt = str(dtype).removeprefix("torch.")
    predicted = {}
    for mode in ("none", "auto", "all"):
        o = opts.model_copy(update={"batch_blocks": mode})
        measured = measured_step_transients(shapes, cfg, dtype, o, steps=4)
        predicted[mode] = group_workspace_bytes([(s, dt) for s in shapes], cfg, o, scratch=False)
        assert measured <= predicted[mode] <= measured + 64, (seed, shapes, mode, predicted[mode], measured)
    assert predicted["auto"] <= predicted["none"], (seed, shapes, predicted)


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: c[0].label() + " " + c[1].fd_variant)
def test_the_per_member_retry_stays_within_the_replayed_peak(case, monkeypatch):
    """Every stacked FD update fails (it returns its inputs, as ``fd_update`` does when LAPACK refuses), so each
    member is retried from its slice of the stack: MemTracker's step peak stays within the group's replay (the
    retry runs after the stacked sketches are freed)."""
    force_float64_retry(monkeypatch)
    real = torch_sketchy.fd_update
    retried = [0]

    def stacks_fail(u, sig2, rho, x, *args):
        if x._base is None:  # the whole stack (a member's retry gets a view of it)
            return u, sig2, rho
        retried[0] += 1
        return real(u, sig2, rho, x, *args)

    monkeypatch.setattr(torch_sketchy, "fd_update", stacks_fail)
    cfg, opts = case
    seed = random.randrange(10**6)
    shapes = _shapes(random.Random(seed))
    opts = opts.model_copy(update={"batch_blocks": "all"})
    measured = measured_step_transients(shapes, cfg, torch.float32, opts, steps=3)
    predicted = group_workspace_bytes([(s, "float32") for s in shapes], cfg, opts, scratch=False)
    assert retried[0] > 0 and measured <= predicted, (seed, shapes, measured, predicted)
