"""``nonfinite_guard=False``: the gradients are used as they are (no read, no skip counted), in torch and optax;
the default still replaces a non-finite gradient by zeros."""

from __future__ import annotations

import math
import warnings

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


#: A gradient the guard reads by a dot on CPU (float32, ≥ ``DOT_MIN_NUMEL`` elements) and two it reads in the
#: shared ``torch._foreach_norm`` (whatever the dtype, these two).
GUARD_SHAPES = [(256, 256), (300,), (4, 5)]


@pytest.mark.parametrize("on_host", [True, False], ids=["flags read on host", "flags kept on device"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_the_guard_skips_exactly_the_bad_tensors_on_every_read_path(dtype, on_host, monkeypatch):
    """NaN, ±Inf and a huge element in any one tensor skip that tensor alone (its counter +1, the others stepped),
    whichever way the guard reads it (a dot, or its dtype's ``_foreach_norm`` call); so does a sum of squares
    above ``GRAD_SQNORM_LIMIT`` without any huge element, and a float16 gradient whose norm float16 could not hold
    (‖g‖ > 65504, ‖g‖² ≪ the limit) is not skipped. Both ways of acting on the flags: read back (CPU) and kept on
    the device (accelerators: counters added and gradients zeroed in place, run here on CPU tensors)."""
    from sketchplan.optimizers.torch import base
    from sketchplan.optimizers.torch.base import DOT_MIN_NUMEL

    monkeypatch.setattr(base, "_flags_on_host", lambda device: on_host)

    assert math.prod(GUARD_SHAPES[0]) >= DOT_MIN_NUMEL > max(math.prod(s) for s in GUARD_SHAPES[1:])
    state_dtype = "float64" if dtype == torch.float64 else "float32"
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)

    def skipped(grads):
        params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in GUARD_SHAPES]
        opt = Adam(params, lr=0.1, state_dtype=state_dtype)
        for p, g in zip(params, grads):
            p.grad = g
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            opt.step()
        for p in params:
            assert all(bool(torch.isfinite(v).all()) for v in opt.state[p].values() if torch.is_tensor(v))
            assert bool(torch.isfinite(p).all())
        return [int(opt.state[p]["nonfinite_skips"]) for p in params]

    def healthy():
        return [(torch.randn(s, generator=gen) * 1e-2).to(dtype) for s in GUARD_SHAPES]

    assert skipped(healthy()) == [0, 0, 0]
    for value in (math.nan, math.inf, -math.inf, 1e20):
        for k, shape in enumerate(GUARD_SHAPES):
            grads = healthy()
            grads[k].view(-1)[torch.randint(math.prod(shape), (), generator=gen)] = value
            assert skipped(grads) == [int(i == k) for i in range(len(GUARD_SHAPES))], (value, k)
    if dtype != torch.float16:  # ‖g‖² = n·x² just above and below 2¹⁰⁰ ≈ 1.27e30, every element moderate
        for k, (above, below) in enumerate([(6e12, 3e12), (7e13, 5e13), (3e14, 2e14)]):
            for x, want in ((above, 1), (below, 0)):
                grads = healthy()
                grads[k].fill_(x)
                assert skipped(grads) == [want if i == k else 0 for i in range(len(GUARD_SHAPES))], (k, x)
    else:
        grads = healthy()
        grads[0].fill_(300.0)  # ‖g‖ = 76800: inf in float16, 5.9e9 as the float32 ‖g‖² the guard tests
        assert skipped(grads) == [0, 0, 0]


def test_the_guard_reads_a_16bit_gradient_without_a_float32_copy():
    """Fused bfloat16 Adam (bfloat16 parameters, momentum and v): the guard's transients stay within the replay's
    16 bytes per tensor (its norms are read in place; a float32 copy per gradient once put the step 0.36 MB over
    the replay for a 300 × 300 tensor)."""
    from replay import measured_step_transients

    from sketchplan.methods import MethodConfig, OptimizerDefaults
    from sketchplan.methods.adam import fused, group_workspace_bytes

    cfg, opts = MethodConfig(method="adam", momentum="bfloat16"), OptimizerDefaults(state_dtype="bfloat16")
    shapes = [(300, 300), (7,), (2, 3, 4)]
    assert fused(cfg, opts, ["bfloat16"] * len(shapes))
    measured = measured_step_transients(shapes, cfg, torch.bfloat16, opts, steps=2)
    predicted = group_workspace_bytes([(s, "bfloat16") for s in shapes], cfg, opts)
    assert measured <= predicted == 16 * len(shapes), (measured, predicted)
