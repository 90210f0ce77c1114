"""``nonfinite_guard``: ``False`` uses the gradients as they are (no read, no skip counted), in torch and optax;
``True`` replaces a non-finite gradient by zeros; ``auto`` (the default) is ``True`` in an optimizer holding a
matrix method and ``False`` where every tensor is elementwise (torch AdamW's semantics and speed)."""

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
    existed must still step, with the option at its default (``auto``: on beside Sketchy, so a NaN gradient is
    skipped)."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    p = torch.nn.Parameter(torch.randn(3, 4, generator=g))
    p.grad = torch.randn(3, 4, generator=g)
    opt = Sketchy([p], lr=0.1, rank=2)
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["nonfinite_guard"]
    again = Sketchy([p], lr=0.1, rank=2)
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
        opt = Adam(params, lr=0.1, state_dtype=state_dtype, nonfinite_guard=True)
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

    cfg = MethodConfig(method="adam", momentum="bfloat16")
    opts = OptimizerDefaults(state_dtype="bfloat16", nonfinite_guard=True)
    shapes = [(300, 300), (7,), (2, 3, 4)]
    assert fused(cfg, opts, ["bfloat16"] * len(shapes))
    measured = measured_step_transients(shapes, cfg, torch.bfloat16, opts, steps=2)
    predicted = group_workspace_bytes([(s, "bfloat16") for s in shapes], cfg, opts)
    assert measured <= predicted == 16 * len(shapes), (measured, predicted)


def _nan_grads(gen: torch.Generator) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    """A (7, 5) matrix and a (5,) vector with fresh random gradients, a NaN in the vector's."""
    params = [torch.nn.Parameter(torch.randn(7, 5, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]
    grads = [torch.randn(7, 5, generator=gen), torch.randn(5, generator=gen)]
    grads[1][torch.randint(5, (), generator=gen)] = math.nan
    return params, grads


def test_auto_guard_is_off_for_an_all_adam_optimizer_as_in_torch_fused_adamw():
    """``auto`` over Adam alone: no read, nothing skipped, and the step is torch's fused AdamW's to the bit, NaN
    included (the peer steps copies of the same tensors)."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    params, grads = _nan_grads(gen)
    peer = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = Adam(params, lr=0.1, weight_decay=0.01)
    theirs = torch.optim.AdamW(peer, lr=0.1, weight_decay=0.01, fused=True)
    for step in range(2):
        for p, q, g in zip(params, peer, grads):
            p.grad, q.grad = g.clone(), g.clone()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # the guard's warning would be an error here
            ours.step()
        theirs.step()
    for p, q in zip(params, peer):
        assert torch.equal(p.isnan(), q.isnan()) and torch.equal(p.nan_to_num(), q.nan_to_num())
    assert bool(params[1].isnan().any()) and bool(torch.isfinite(params[0]).all())
    assert [int(ours.state[p]["nonfinite_skips"]) for p in params] == [0, 0]


@pytest.mark.parametrize("guard", ["auto", True])
def test_auto_guard_beside_a_matrix_method_skips_the_adam_tensor_too(guard):
    """One answer per optimizer: a Sketchy group turns ``auto`` on for the Adam group as well, so the vector with
    the NaN is skipped (state and parameter finite, counter 1) while the matrix steps; ``True`` on an all-Adam
    optimizer does the same."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    params, grads = _nan_grads(gen)
    before = [p.detach().clone() for p in params]
    if guard == "auto":
        opt = Sketchy([{"params": [params[0]]}, {"params": [params[1]], "method": "adam", "rank": None}],
                      lr=0.1, rank=2)
        assert [g["method"] for g in opt.param_groups] == ["sketchy", "adam"]
    else:
        opt = Adam(params, lr=0.1, nonfinite_guard=True)
    for p, g in zip(params, grads):
        p.grad = g
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        opt.step()
    assert [int(opt.state[p]["nonfinite_skips"]) for p in params] == [0, 1]
    assert all(bool(torch.isfinite(v).all()) for p in params for v in opt.state[p].values() if torch.is_tensor(v))
    assert bool(torch.isfinite(params[1]).all()) and not torch.equal(params[0].detach(), before[0])


def test_auto_guard_in_optax_is_one_answer_per_tree():
    """The optax transformation resolves ``auto`` over the whole tree: Adam alone lets the NaN through (counter 0,
    NaN in the update); beside a Sketchy tensor the Adam tensor's NaN gradient is skipped (counter 1, finite)."""
    jnp = pytest.importorskip("jax.numpy")
    import numpy as np

    from sketchplan.methods import MethodConfig, OptimizerDefaults
    from sketchplan.optimizers.jax.transform import scale_by_assignment

    rng = np.random.default_rng()
    params = {"w": jnp.asarray(rng.standard_normal((7, 5)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal(5), jnp.float32)}
    bad = rng.standard_normal(5).astype(np.float32)
    bad[rng.integers(5)] = np.nan
    grads = {"w": jnp.asarray(rng.standard_normal((7, 5)), jnp.float32), "b": jnp.asarray(bad)}
    adam, sketchy = MethodConfig(method="adam"), MethodConfig(method="sketchy", rank=2)
    opts = OptimizerDefaults(lr=0.1)
    for w_cfg, skipped in ((adam, False), (sketchy, True)):
        tx = scale_by_assignment(lambda name, shape, w_cfg=w_cfg: (w_cfg if "w" in name else adam, opts))
        update, state = tx.update(grads, tx.init(params), params)
        names = [n for n, _ in sorted(params.items())]  # the tree's leaf order
        skips = int(state.factors[names.index("b")]["nonfinite_skips"])
        assert skips == int(skipped)
        assert bool(jnp.isnan(update["b"]).any()) is (not skipped)


def test_the_plan_times_the_guard_as_the_built_optimizer_resolves_it():
    """An all-Adam plan's entries are timed without the guard's pass, a plan with a Sketchy tensor times its Adam
    entries with it: each equals the profile's time of the calls written out here (fused AdamW: 3 passes, the
    guard 1 more and a scalar), and the plan's all-Adam baseline is the unguarded one."""
    from sketchplan.kernels.calls import pointwise
    from sketchplan.methods import MethodConfig
    from sketchplan.planner.make import plan_from_configs
    from sketchplan.profiles.cost import CostModel
    from sketchplan.profiles.registry import shipped_profiles

    hw = shipped_profiles()[0]
    cost = CostModel(hw)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 32))
    adam, sketchy = MethodConfig(method="adam"), MethodConfig(method="sketchy", rank=4)

    def ms(calls):
        return cost.step(calls)[0] * 1e3

    alone = plan_from_configs(model, adam, hardware=hw)
    mixed = plan_from_configs(model, {"0.weight": sketchy, "0.bias": adam, "1.weight": adam, "1.bias": adam},
                              hardware=hw)
    for plan, guard in ((alone, 0), (mixed, 1)):
        for e in plan.tensors:
            if e.method == "adam":
                n = math.prod(e.shape)
                want = ms([pointwise(n, 3 + guard)] + [pointwise(1)] * guard)
                assert e.step_ms == pytest.approx(want, abs=1e-4), (e.name, guard)
    n_all = sum(math.prod(e.shape) for e in alone.tensors)
    assert alone.totals.adam_step_ms == pytest.approx(sum(ms([pointwise(math.prod(e.shape), 3)])
                                                          for e in alone.tensors), abs=2e-3), n_all
    assert mixed.totals.adam_step_ms == pytest.approx(alone.totals.adam_step_ms)


def test_explain_times_each_alternative_with_the_guard_its_optimizer_would_run():
    """``sketchplan explain`` on an all-Adam plan made under a bound only all-Adam meets: the chosen Adam row is
    timed without the guard (as the plan's entry), a matrix alternative with it (choosing it would turn it on)."""
    from sketchplan.kernels.calls import pointwise
    from sketchplan.methods import MethodConfig, OptimizerDefaults
    from sketchplan.planner.analysis import analyze
    from sketchplan.planner.explain import explain
    from sketchplan.planner.candidates import candidate_configs
    from sketchplan.planner.make import make_plan
    from sketchplan.planner.timing import StepTimer
    from sketchplan.profiles.cost import CostModel
    from sketchplan.profiles.registry import shipped_profiles

    hw = shipped_profiles()[0]
    model = torch.nn.Sequential(torch.nn.Linear(96, 80))
    # a bound only all-Adam meets (unguarded: ``auto`` leaves the guard out of it), with matrix methods offered
    plan = make_plan(model, None, hardware=hw, methods=("adam", "shampoo", "sketchy"), max_step_vs_adam=1.0)
    assert {e.method for e in plan.tensors} == {"adam"}
    assert plan.solver.binding == "time" and "time" in plan.solver.relax  # time keeps the matrix methods out
    rows = explain(plan, analyze(model), "0.weight").rows
    chosen = next(r for r in rows if r.chosen)
    assert chosen.step_ms == pytest.approx(CostModel(hw).step([pointwise(96 * 80, 3)])[0] * 1e3)
    guarded = StepTimer(CostModel(hw), OptimizerDefaults(nonfinite_guard=True))
    matrix = [r for r in rows if r.label.startswith(("shampoo", "sketchy", "blocked", "kradagrad", "soap"))]
    assert matrix
    cfgs = {c.label(): c for c in candidate_configs(("shampoo", "sketchy"))}
    for r in matrix:
        assert r.step_ms == pytest.approx(guarded((80, 96), cfgs[r.label])[0]), r.label

    # the plan's only matrix tensor: choosing Adam for it would leave an all-Adam optimizer, so no guard
    mixed = make_plan(model, None, hardware=hw, methods=("adam", "sketchy"), max_step_vs_adam=float("inf"))
    assert [e.method for e in mixed.tensors] == ["sketchy", "adam"]
    adam = next(r for r in explain(mixed, analyze(model), "0.weight").rows if r.label == "adam")
    assert adam.step_ms == pytest.approx(CostModel(hw).step([pointwise(96 * 80, 3)])[0] * 1e3)
