"""Each method's ``kernel_calls`` mirrors what its torch optimizer runs: the declared FD updates, low-rank
applies and inverse roots (dims, batch, how often) equal the calls a few real steps make."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sketchplan.methods import METHOD_MODULES
from sketchplan.optimizers.torch import SketchplanOptimizer, kradagrad, shampoo, sketchy
from sketchplan.methods.layout import MethodConfig, OptimizerDefaults

SHAPES = [(24, 40), (40,), (6, 5, 4, 3), (70, 9)]
STEPS = 6


def _record(monkeypatch, module, name, key):
    seen = Counter()
    real = getattr(module, name)

    def spy(*args, **kwargs):
        seen[key(*args)] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)
    return seen


def _run(cfg, opts, shape):
    p = torch.nn.Parameter(torch.randn(shape))
    opt = SketchplanOptimizer([p], cfg, opts)
    for i in range(STEPS):
        p.grad = torch.randn(shape, generator=torch.Generator().manual_seed(i))
        opt.step()


def _declared(cfg, opts, shape, kernel):
    out = Counter()
    for c in METHOD_MODULES[cfg.method].kernel_calls(shape, cfg, opts):
        if c.kernel == kernel:
            runs = sum(1 for s in range(1, STEPS + 1) if (s - 1) % c.every == 0)
            out[(c.dims, c.batch)] += runs
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block,stats_every", [(None, 1), (16, 1), (None, 2)])
def test_sketchy_calls(monkeypatch, shape, block, stats_every):
    cfg = MethodConfig(method="sketchy", rank=8, block_size=block)
    opts = OptimizerDefaults(stats_every=stats_every)
    fd = _record(monkeypatch, sketchy, "fd_update", lambda u, s, r, x, *a: ((u.shape[1], u.shape[2], x.shape[2]),
                                                                           u.shape[0]))
    lr = _record(monkeypatch, sketchy, "lowrank_root_apply",
                 lambda u, s, r, x, *a: ((u.shape[1], u.shape[2], x.shape[2]), u.shape[0]))
    _run(cfg, opts, shape)
    assert fd == _declared(cfg, opts, shape, "fd_update")
    assert lr == _declared(cfg, opts, shape, "lowrank_apply")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method,module,block", [("shampoo", shampoo, None), ("blocked_shampoo", shampoo, 16),
                                                 ("kradagrad", kradagrad, None)])
def test_root_calls(monkeypatch, shape, method, module, block):
    cfg = MethodConfig(method=method, block_size=block)
    opts = OptimizerDefaults(precondition_frequency=4, stats_every=2, start_preconditioning_step=1)
    roots = _record(monkeypatch, module, "symmetric_power", lambda s, *a, **k: ((s.shape[-1],), s.shape[0]))
    _run(cfg, opts, shape)
    assert roots == _declared(cfg, opts, shape, "inv_root")


def test_statistics_calls_follow_stats_every():
    cfg = MethodConfig(method="shampoo")
    for se in (1, 3):
        calls = METHOD_MODULES["shampoo"].kernel_calls((24, 40), cfg, OptimizerDefaults(stats_every=se))
        stats = [c for c in calls if c.kernel == "gemm" and c.dims[0] == c.dims[1]]
        assert stats and all(c.every == se for c in stats)


def test_every_method_declares_calls():
    opts = OptimizerDefaults()
    for method, module in METHOD_MODULES.items():
        cfg = MethodConfig(method=method, rank=8 if method == "sketchy" else None,
                           block_size=16 if method == "blocked_shampoo" else None)
        calls = module.kernel_calls((32, 48), cfg, opts)
        assert calls and all(c.batch >= 1 and c.every >= 1 for c in calls)


class _MatmulFlops(torch.utils._python_dispatch.TorchDispatchMode):
    """Floating-point operations of every matrix product torch runs (2·m·n·k per product, times the batch),
    counted at the dispatcher, outside the kernels that have calls of their own (``paused``)."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            name = func.overloadpacket.__name__.rstrip("_")  # baddbmm_ (in place) is a product too
            if name in ("mm", "addmm", "bmm", "baddbmm"):
                a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            if name in ("mm", "addmm"):
                self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            elif name in ("bmm", "baddbmm"):
                self.flops += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
            elif name in ("mv", "addmv", "matmul", "linalg_matmul", "einsum", "tensordot"):  # none expected
                raise AssertionError(f"unexpected product {name}: add it to the counter")
        return out


def _pause_inside(monkeypatch, counter, module, name):
    real = getattr(module, name)

    def paused(*args, **kwargs):
        counter.paused += 1
        try:
            return real(*args, **kwargs)
        finally:
            counter.paused -= 1
    monkeypatch.setattr(module, name, paused)


GEMM_CASES = [(MethodConfig(method="shampoo"), "star"), (MethodConfig(method="blocked_shampoo", block_size=16), "star"),
              (MethodConfig(method="sketchy", rank=8), "star"), (MethodConfig(method="sketchy", rank=4, block_size=16),
                                                                 "star"),
              (MethodConfig(method="kradagrad"), "star"), (MethodConfig(method="kradagrad", block_size=16), "star"),
              (MethodConfig(method="kradagrad"), "mm"), (MethodConfig(method="kradagrad", block_size=16), "mm")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cfg,variant", GEMM_CASES, ids=lambda x: x if isinstance(x, str) else x.label())
def test_declared_gemms_are_the_products_a_step_runs(monkeypatch, shape, cfg, variant):
    """Σ over steps of 2·m·n·k·batch of the declared ``gemm`` calls equals the matrix-product flops the torch
    optimizer runs (counted at the dispatcher; the inverse roots, FD updates and low-rank applies are kernels
    with calls of their own and are not counted): a wrong gemm shape, batch or frequency changes the sum."""
    opts = OptimizerDefaults(precondition_frequency=3, stats_every=2, start_preconditioning_step=1,
                             kradagrad_variant=variant)
    counter = _MatmulFlops()
    for module, name in ((shampoo, "symmetric_power"), (kradagrad, "symmetric_power"), (sketchy, "fd_update"),
                         (sketchy, "lowrank_root_apply")):
        _pause_inside(monkeypatch, counter, module, name)
    declared = 0
    for c in METHOD_MODULES[cfg.method].kernel_calls(shape, cfg, opts):
        if c.kernel == "gemm":
            m, n, k = c.dims
            declared += 2 * m * n * k * c.batch * sum(1 for s in range(1, STEPS + 1) if (s - 1) % c.every == 0)
    p = torch.nn.Parameter(torch.randn(shape))
    opt = SketchplanOptimizer([p], cfg, opts)
    with counter:
        for i in range(STEPS):
            p.grad = torch.randn(shape, generator=torch.Generator().manual_seed(i))
            opt.step()
    assert counter.flops == declared


#: ops that move no data (views, casts to the same size, allocation) are not passes
_NOT_PASSES = {"view", "_unsafe_view", "reshape", "expand", "t", "transpose", "permute", "unsqueeze", "squeeze",
               "as_strided", "detach", "alias", "slice", "select", "empty", "zeros", "empty_like", "zeros_like",
               "_record_function_enter_new", "_record_function_exit"}


class _Passes(torch.utils._python_dispatch.TorchDispatchMode):
    """Elementwise passes by size: each data-moving op counts once at the largest tensor it reads or writes (a
    reduction over G reads numel(G) elements; a broadcast product writes it); a multi-tensor op (``_foreach_*``,
    whose operands are lists) once per list position (the guard's ``_foreach_norm`` reads each gradient once)."""

    def __init__(self):
        super().__init__()
        self.passes = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ not in _NOT_PASSES:
            operands = (*args, out)
            lists = [a for a in operands if isinstance(a, (list, tuple)) and a
                     and all(isinstance(t, torch.Tensor) for t in a)]
            for group in (zip(*lists) if lists else [operands]):
                sizes = [t.numel() for t in group if isinstance(t, torch.Tensor)]
                if sizes and max(sizes) > 1:
                    self.passes[max(sizes)] += 1
        return out


@pytest.mark.parametrize("shape", [(24, 40), (6, 5, 4, 3), (70, 9), (300,)])
@pytest.mark.parametrize("momentum,nesterov,weight_decay", [("none", False, 0.0), ("float32", False, 0.0),
                                                            ("float32", True, 0.1), ("bfloat16", False, 0.1)])
def test_extreme_tensoring_declares_the_passes_a_step_makes(shape, momentum, nesterov, weight_decay):
    """Extreme tensoring is all elementwise work: its declared ``pointwise`` calls (passes over n elements) equal,
    size by size, the data-moving ops a steady-state step runs (scalars aside)."""
    cfg = MethodConfig(method="extreme_tensoring", momentum=momentum)
    opts = OptimizerDefaults(nesterov=nesterov, weight_decay=weight_decay)
    p = torch.nn.Parameter(torch.randn(shape))
    opt = SketchplanOptimizer([p], cfg, opts)
    p.grad = torch.randn(shape)
    opt.step()  # the first step allocates the state
    p.grad = torch.randn(shape)
    seen = _Passes()
    with seen:
        opt.step()
    declared = Counter()
    resolved = opts.with_guard_for(["extreme_tensoring"])  # as the planner times the built optimizer: no guard
    for c in METHOD_MODULES["extreme_tensoring"].kernel_calls(shape, cfg, resolved):
        assert c.kernel == "pointwise" and c.every == 1
        if c.dims[0] > 1:
            declared[c.dims[0]] += c.batch
    assert seen.passes == declared


def test_the_dispatcher_sends_each_method_to_its_own_module():
    """``methods.kernel_calls`` (what the planner calls) answers with the named method's calls, for a shape given
    as any integers."""
    import numpy as np

    from sketchplan.methods import kernel_calls

    opts = OptimizerDefaults()
    seen = set()
    for method, module in METHOD_MODULES.items():
        cfg = MethodConfig(method=method, rank=8 if method == "sketchy" else None,
                           block_size=16 if method == "blocked_shampoo" else None)
        got = kernel_calls([np.int64(24), np.int64(40)], cfg, opts)
        assert got == module.kernel_calls((24, 40), cfg, opts)
        assert all(type(d) is int for c in got for d in c.dims)
        seen.add(tuple(sorted({c.kernel for c in got})))
    assert len(seen) >= 3  # the methods' calls differ: a dispatcher answering one method for all would not
