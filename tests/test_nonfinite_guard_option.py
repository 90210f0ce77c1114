"""``nonfinite_guard=False``: the gradients are used as they are (no read, no skip counted), in torch and optax;
the default still replaces a non-finite gradient by zeros."""

from __future__ import annotations

import math

import pytest
import torch

from sketchplan.optimizers import Adam, Sketchy


def _poisoned(seed: int) -> tuple[torch.nn.Parameter, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(6, 5, generator=g))
    grad = torch.randn(6, 5, generator=g)
    grad[2, 3] = math.nan
    return p, grad


@pytest.mark.parametrize("make", [lambda ps, **kw: Adam(ps, lr=0.1, **kw),
                                  lambda ps, **kw: Sketchy(ps, lr=0.1, rank=2, **kw)], ids=["adam", "sketchy"])
def test_guard_off_lets_nan_through_and_counts_nothing(make):
    for guard in (True, False):
        p, grad = _poisoned(torch.seed() % 2**31)
        before = p.detach().clone()
        opt = make([p], nonfinite_guard=guard)
        p.grad = grad
        opt.step()
        skips = int(opt.state[p]["nonfinite_skips"])
        if guard:  # the tensor's statistics update is skipped; the state stays finite
            assert skips == 1
            assert all(bool(torch.isfinite(v).all()) for v in opt.state[p].values() if torch.is_tensor(v))
            assert bool(torch.isfinite(p).all())
        else:  # torch's semantics: the NaN reaches the parameter, nothing is counted
            assert skips == 0
            assert bool(torch.isnan(p[2, 3]))
            assert not torch.equal(p.detach(), before)


def test_guard_off_in_optax_lets_nan_through():
    jnp = pytest.importorskip("jax.numpy")
    import importlib

    from sketchplan.methods import MethodConfig, OptimizerDefaults
    jax_adam = importlib.import_module("sketchplan.optimizers.jax.adam")  # the package exports an ``adam`` too

    import numpy as np
    grad = np.random.default_rng().standard_normal((4, 3)).astype(np.float32)
    grad[1, 2] = np.nan
    cfg = MethodConfig(method="adam")
    for guard in (True, False):
        opts = OptimizerDefaults(lr=0.1, nonfinite_guard=guard)
        state = {"exp_avg": jnp.zeros((4, 3)), "exp_avg_sq": jnp.zeros((4, 3)),
                 "nonfinite_skips": jnp.zeros((), jnp.int32)}
        update, new = jax_adam.step(jnp.asarray(grad), state, jnp.asarray(1, jnp.int32), cfg, opts)
        assert int(new["nonfinite_skips"]) == (1 if guard else 0)
        assert bool(jnp.isnan(update[1, 2])) is (not guard)


@pytest.mark.parametrize("method", ["adam", "lion", "sketchy", "soap"])
def test_the_step_model_drops_the_guard_read_with_the_guard(method):
    """The planner's kernel calls: the guard is one elementwise pass over the gradient (and a scalar add); with
    ``nonfinite_guard`` off exactly those go, nothing else changes."""
    from sketchplan.methods import MethodConfig, OptimizerDefaults, kernel_calls

    shape, cfg = (48, 40), MethodConfig(method=method, rank=4 if method == "sketchy" else None)

    def passes(calls):
        return {n: sum(c.batch for c in calls if c.kernel == "pointwise" and c.dims == (n,)) for n in (1, 48 * 40)}

    on = kernel_calls(shape, cfg, OptimizerDefaults())
    off = kernel_calls(shape, cfg, OptimizerDefaults(nonfinite_guard=False))
    assert passes(on)[48 * 40] - passes(off)[48 * 40] == 1
    assert passes(on)[1] - passes(off)[1] == 1
    assert [c for c in on if c.kernel != "pointwise"] == [c for c in off if c.kernel != "pointwise"]


def test_a_state_dict_saved_before_the_option_loads_and_steps():
    """torch's ``load_state_dict`` keeps the saved groups' keys only: a checkpoint from before ``nonfinite_guard``
    existed must still step, with the option at its default (the guard on: a NaN gradient is skipped)."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    p = torch.nn.Parameter(torch.randn(3, 4, generator=g))
    p.grad = torch.randn(3, 4, generator=g)
    opt = Adam([p], lr=0.1)
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["nonfinite_guard"]
    again = Adam([p], lr=0.1)
    again.load_state_dict(saved)
    p.grad = torch.full((3, 4), math.nan)
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        again.step()
    assert int(again.state[p]["nonfinite_skips"]) == 1 and bool(torch.isfinite(p).all())
