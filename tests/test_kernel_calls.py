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
