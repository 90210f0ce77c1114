"""The optax transformations (optimizers/jax): state bytes equal the plan's, directions equal torch's, the plan's
mismatches are refused, corner cases (non-finite gradients, root refresh schedule), and training on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from plans import CONFIGS, DEFAULTS  # noqa: E402

from sketchplan import build_optax  # noqa: E402
from sketchplan.cli import main  # noqa: E402
from sketchplan.errors import UserError  # noqa: E402
from sketchplan.build import build_optimizer  # noqa: E402
from sketchplan.methods import MethodConfig, OptimizerDefaults, state_layout  # noqa: E402
from sketchplan.optimizers import (  # noqa: E402
    Adam, BlockedShampoo, ExtremeTensoring, KrADagrad, Shampoo, Sketchy,
)
from sketchplan.optimizers.jax import constructors as jx  # noqa: E402
from sketchplan.optimizers.jax.common import bias_correction  # noqa: E402
from sketchplan.optimizers.jax.transform import SketchplanState, named_leaves  # noqa: E402
from sketchplan.planner import make_plan, uniform_plan  # noqa: E402
from sketchplan.planner.plan import Plan  # noqa: E402

#: The counter every transformation keeps besides the layouts: one int32 scalar.
COUNT_BYTES = 4


def zoo_params():
    """A pytree with the corner cases of tests/plans.py's Zoo: conv kernel, 1-D, scalar, prime dims, an
    embedding above max_precond_dim (falls back to its graft). ShapeDtypeStructs: nothing is allocated."""
    s = jax.ShapeDtypeStruct
    return {"params": {"emb": {"embedding": s((50, 12), jnp.float32)},
                       "conv": {"kernel": s((5, 3, 3, 3), jnp.float32), "bias": s((5,), jnp.float32)},
                       "lin": {"kernel": s((12, 13), jnp.float32), "bias": s((13,), jnp.float32)},
                       "scale": s((), jnp.float32)}}


def tree_bytes(tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def sp_state(state) -> SketchplanState:
    """The ``SketchplanState`` inside an alias's ``optax.chain`` state."""
    return next(s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, SketchplanState))
                if isinstance(s, SketchplanState))


def tensor_arrays(state, params, name, method) -> dict:
    """One tensor's layout arrays by layout name, read from the tree-shaped state: ``factors`` by leaf position,
    ``mu``/``nu`` where the tensor has that role (a non-empty leaf): Adam's exp_avg / exp_avg_sq, the matrix
    methods' momentum / graft_exp_avg_sq (docs/jax.md)."""
    s = sp_state(state)
    i = [n for n, _ in named_leaves(params)[0]].index(name)
    out = dict(s.factors[i])
    names = {"mu": "exp_avg" if method == "adam" else "momentum",
             "nu": "exp_avg_sq" if method == "adam" else "graft_exp_avg_sq"}
    for field, layout_name in names.items():
        leaf = jax.tree.leaves(getattr(s, field))[i]
        if math.prod(leaf.shape):
            out[layout_name] = leaf
    return out


# ---- state bytes ----

@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_bytes_equal_plan(name):
    params = zoo_params()
    plan = uniform_plan(params, CONFIGS[name], DEFAULTS)
    state = jax.eval_shape(build_optax(plan, params).init, params)
    assert tree_bytes(state) == plan.totals.state_bytes + COUNT_BYTES
    assert sp_state(state).count.shape == () and sp_state(state).count.dtype == jnp.int32
    for e in plan.tensors:
        arrays = tensor_arrays(state, params, e.name, e.method)
        expected = state_layout(tuple(e.shape), e.config(), plan.defaults)
        assert sorted((t.name, t.shape, t.dtype) for t in expected) == sorted(
            (k, tuple(v.shape), str(v.dtype)) for k, v in arrays.items())
        assert tree_bytes(arrays) == e.state_bytes


def test_mixed_plan_under_budget_state_bytes():
    params = zoo_params()
    # merge_dims 8: the zoo's small matrices stay matrices (merged into vectors they would all get Adam,
    # planner.quality's vector rule)
    plan = make_plan(params, "200KiB", defaults=DEFAULTS.model_copy(update={"merge_dims": 8}), ranks=(2, 4),
                     block_sizes=(8,))
    assert len({e.method for e in plan.tensors}) > 1
    assert tree_bytes(jax.eval_shape(build_optax(plan, params).init, params)) == plan.totals.state_bytes + 4


def test_cli_plans_a_jax_factory_and_build_optax_matches(tmp_path):
    out = tmp_path / "plan.yaml"
    assert main(["plan", "--model", "examples.jax_models:jax_mlp", "--memory-budget", "1GiB", "--out", str(out)]) == 0
    plan = Plan.load(out)
    from examples.jax_models import jax_mlp

    params = jax_mlp()
    assert {e.name for e in plan.tensors} == {"params/Dense_0/kernel", "params/Dense_0/bias", "params/Dense_1/kernel",
                                              "params/Dense_1/bias", "params/Dense_2/kernel", "params/Dense_2/bias"}
    state = jax.eval_shape(build_optax(plan, params).init, params)
    assert tree_bytes(state) == plan.totals.state_bytes + COUNT_BYTES


# ---- plan/tree mismatches ----

def test_mismatches_are_refused_naming_the_key_path():
    params = zoo_params()
    plan = uniform_plan(params, MethodConfig(method="adam"), DEFAULTS)
    renamed = {"params": {**params["params"], "lin2": params["params"]["lin"]}}
    del renamed["params"]["lin"]
    with pytest.raises(UserError, match="params/lin2/bias"):
        build_optax(plan, renamed)
    reshaped = jax.tree.map(lambda x: x, params)
    reshaped["params"]["lin"]["kernel"] = jax.ShapeDtypeStruct((13, 12), jnp.float32)
    with pytest.raises(UserError, match=r"params/lin/kernel.*\(13, 12\)"):
        build_optax(plan, reshaped)
    smaller = {"params": {k: v for k, v in params["params"].items() if k != "scale"}}
    with pytest.raises(UserError, match="params/scale"):
        build_optax(plan, smaller)
    bf16 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), params)
    with pytest.raises(UserError, match="different model"):
        build_optax(plan, bf16)


# ---- parity with torch ----

SHAPES = {"mat": (12, 8), "vec": (7,), "cube": (4, 3, 5), "scalar": ()}
#: Roots are first computed at step 8, from full-rank statistics (a rank-deficient statistic's null space is
#: float32 eigh noise, amplified by ε^(−1/4), which differs between LAPACK calls and would linger in momentum).
#: Observed worst relative errors (torch 2.13 CPU, jax 0.10.2): adam 3.1e-7, adam_bf16 3.2e-7, shampoo 2.5e-6,
#: blocked_shampoo 5.7e-7, blocked_shampoo_bf16 3.4e-7, sketchy 1.2e-6, extreme_tensoring 2.0e-7,
#: kradagrad 9.1e-7, kradagrad_mm 1.1e-6: every tolerance is within 100× of them.
MATRIX = dict(precondition_frequency=3, merge_dims=8, weight_decay=0.01, start_preconditioning_step=8,
              shampoo_eps=1e-6)
PARITY = {
    "adam": (lambda p: Adam(p, lr=1e-2, weight_decay=0.01), lambda: jx.adam(1e-2, weight_decay=0.01), 1e-5),
    "adam_bf16": (lambda p: Adam(p, lr=1e-2, momentum="bfloat16"), lambda: jx.adam(1e-2, momentum="bfloat16"),
                  1e-5),
    "shampoo": (lambda p: Shampoo(p, lr=1e-2, **MATRIX), lambda: jx.shampoo(1e-2, **MATRIX), 1e-5),
    "blocked_shampoo": (lambda p: BlockedShampoo(p, lr=1e-2, block_size=5, graft="rmsprop", nesterov=True, **MATRIX),
                        lambda: jx.blocked_shampoo(1e-2, block_size=5, graft="rmsprop", nesterov=True, **MATRIX),
                        1e-5),
    "blocked_shampoo_bf16": (lambda p: BlockedShampoo(p, lr=1e-2, block_size=5, momentum="bfloat16", **MATRIX),
                             lambda: jx.blocked_shampoo(1e-2, block_size=5, momentum="bfloat16", **MATRIX),
                             1e-5),  # observed 3.4e-7 (both round the bf16 momentum alike)
    "sketchy_stats_every_2": (
        lambda p: Sketchy(p, lr=1e-2, rank=4, graft="adafactor", momentum="none", stats_every=2, **MATRIX),
        lambda: jx.sketchy(1e-2, rank=4, graft="adafactor", momentum="none", stats_every=2, **MATRIX), 1e-5),
    "extreme_tensoring": (lambda p: ExtremeTensoring(p, lr=1e-2, et_max_dim=4, momentum="float32"),
                          lambda: jx.extreme_tensoring(1e-2, et_max_dim=4, momentum="float32"), 1e-5),
    "kradagrad": (lambda p: KrADagrad(p, lr=1e-2, graft="sgd", **MATRIX),
                  lambda: jx.kradagrad(1e-2, graft="sgd", **MATRIX), 1e-5),
    "kradagrad_mm": (lambda p: KrADagrad(p, lr=1e-2, variant="mm", **MATRIX),
                     lambda: jx.kradagrad(1e-2, variant="mm", **MATRIX), 1e-5),
    # one axis per statistics update: with stats_every = 2 both axes are still reached
    "kradagrad_mm_every2": (lambda p: KrADagrad(p, lr=1e-2, variant="mm", stats_every=2, **MATRIX),
                            lambda: jx.kradagrad(1e-2, variant="mm", stats_every=2, **MATRIX), 1e-5),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_directions_equal_torch(name):
    """Same gradient stream; the torch step Δp (float64 parameters, float32 state: Δp is the float32 update
    exactly) against the jitted optax update, relative error per tensor after warm-up (steps ≥ 10)."""
    from jax_parity import worst_update_error

    make_torch, make_jax, tol = PARITY[name]
    rng = np.random.default_rng(0)
    tparams = {k: torch.nn.Parameter(torch.tensor(np.asarray(rng.standard_normal(s), np.float32),
                                                  dtype=torch.float64)) for k, s in SHAPES.items()}
    worst = worst_update_error(make_torch(list(tparams.values())), tparams, make_jax(), rng, steps=14, from_step=10)
    assert worst <= tol, f"{name}: max relative error {worst:.2e}"


def test_bias_correction_keeps_float32_digits():
    for beta in (0.9, 0.999):
        for t in (1, 2, 10, 1000):
            exact = 1 - beta**t  # float64 reference
            got = float(bias_correction(beta, jnp.int32(t)))
            assert abs(got - exact) / exact < 1e-6


# ---- corner cases ----

def test_nonfinite_gradient_is_skipped_and_counted():
    params = {"w": jnp.ones((6, 4)), "b": jnp.ones((4,))}
    tx = jx.shampoo(1e-2, precondition_frequency=1)
    state = tx.init(params)
    update = jax.jit(tx.update)
    good = {"w": jnp.full((6, 4), 0.5), "b": jnp.full((4,), 0.5)}
    _, state = update(good, state, params)
    bad = {"w": good["w"].at[0, 0].set(jnp.nan), "b": good["b"]}
    updates, state2 = update(bad, state, params)
    w2, w1 = (tensor_arrays(s, params, "w", "shampoo") for s in (state2, state))
    assert int(w2["nonfinite_skips"]) == 1
    assert int(tensor_arrays(state2, params, "b", "shampoo")["nonfinite_skips"]) == 0
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves((updates, state2)))
    np.testing.assert_array_equal(w2["blocks0.stat0"], 0.999 * w1["blocks0.stat0"])


def test_roots_are_recomputed_every_precondition_frequency_steps():
    params = {"w": jnp.ones((5, 3))}
    tx = jx.kradagrad(1e-2, precondition_frequency=4, start_preconditioning_step=1)
    state = tx.init(params)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(1)
    roots = []
    for _ in range(9):
        _, state = update({"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)}, state, params)
        roots.append(np.asarray(tensor_arrays(state, params, "w", "kradagrad")["blocks0.root0"]))
    changed = [t + 1 for t in range(1, 9) if not np.array_equal(roots[t], roots[t - 1])]
    assert changed == [5, 9]  # steps 1, 5, 9 (start 1, every 4)


def test_eval_shape_and_jit_for_every_method():
    params = {"w": jax.ShapeDtypeStruct((6, 4), jnp.float32), "b": jax.ShapeDtypeStruct((4,), jnp.float32)}
    for make in (jx.adam, jx.shampoo, jx.blocked_shampoo, jx.extreme_tensoring, jx.kradagrad):
        tx = make(1e-3)
        state = jax.eval_shape(tx.init, params)
        updates, new = jax.eval_shape(tx.update, params, state, params)
        assert jax.tree.structure(new) == jax.tree.structure(state)
        assert jax.tree.map(lambda u, p: u.shape == p.shape, updates, params) == {"w": True, "b": True}
    tx = jx.sketchy(optax.linear_schedule(1e-3, 0.0, 10), rank=2)
    state = jax.eval_shape(tx.init, params)
    assert tree_bytes(state) == sum(t.nbytes for s in ((6, 4), (4,)) for t in state_layout(
        s, MethodConfig(method="sketchy", rank=2), OptimizerDefaults())) + COUNT_BYTES + 4  # the schedule's count



@pytest.mark.parametrize("name", ["soap", "adafactor", "lion", "muon"])
def test_soap_adafactor_lion_muon_aliases_take_inject_hyperparams_and_tree_map_params(name):
    """SOAP, Adafactor, Lion and Muon as optax idioms: ``inject_hyperparams`` gives the alias's updates (a float
    learning rate injected and traced), ``tree_map_params`` maps the params' specs onto ``mu``/``nu``, the state
    bytes are the layouts' plus the count, and the direction form chains to the same updates."""
    rng = np.random.default_rng()
    params = {"w": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal((4,)), jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    make, direction = getattr(jx, name), getattr(jx, f"scale_by_{name}")
    plain = make(1e-2)
    injected = optax.inject_hyperparams(make)(learning_rate=1e-2)
    chained = optax.chain(direction(**({"lr": 1e-2} if name == "adafactor" else {})),
                          optax.scale_by_learning_rate(1e-2))
    outs = []
    for tx in (plain, injected, chained):
        state = tx.init(params)
        for _ in range(3):
            updates, state = jax.jit(tx.update)(grads, state, params)
        outs.append(updates)
    for k in params:
        np.testing.assert_allclose(np.asarray(outs[1][k]), np.asarray(outs[0][k]), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(np.asarray(outs[2][k]), np.asarray(outs[0][k]))
    state = plain.init(params)
    cfg = MethodConfig(method=name, momentum="none" if name == "adafactor" else "float32")  # the aliases' defaults
    opts = OptimizerDefaults(betas=(0.95, 0.95)) if name == "soap" else OptimizerDefaults()
    assert tree_bytes(state) == sum(t.nbytes for p in params.values()
                                    for t in state_layout(tuple(p.shape), cfg, opts)) + COUNT_BYTES
    marks = optax.tree_map_params(plain, lambda p, m: m, state, {"w": "W", "b": "B"},
                                  transform_non_params=lambda _: None)
    sp = sp_state(marks)
    assert sp.mu == {"w": "W", "b": "B"} and sp.nu == {"w": "W", "b": "B"}


def test_adafactor_update_without_params_is_refused():
    params = {"w": jnp.ones((6, 4))}
    tx = jx.adafactor(1e-2)
    with pytest.raises(UserError, match=r"update\(grads, state, params\)"):
        tx.update(params, tx.init(params))


# ---- training on digits ----

LR = 0.05
TRAIN_MATRIX = dict(shampoo_eps=1e-6, merge_dims=1, precondition_frequency=5)
TRAIN = {
    "adam": (MethodConfig(method="adam"), {}),
    "shampoo": (MethodConfig(method="shampoo"), TRAIN_MATRIX),
    "sketchy": (MethodConfig(method="sketchy", rank=16), TRAIN_MATRIX),
    "kradagrad": (MethodConfig(method="kradagrad"), TRAIN_MATRIX),
    "extreme_tensoring": (MethodConfig(method="extreme_tensoring", momentum="none"), dict(lr=0.5, betas=(0.9, 1.0))),
}


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def _torch_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))


def _batches(n, steps=60, batch=256):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, n, (batch,), generator=g).numpy() for _ in range(steps)]


def _loss(params, x, y):
    h = jnp.tanh(x @ params["params"]["Dense_0"]["kernel"] + params["params"]["Dense_0"]["bias"])
    logits = h @ params["params"]["Dense_1"]["kernel"] + params["params"]["Dense_1"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("name", list(TRAIN))
def test_planned_transformation_trains_mlp_like_torch(digits, name):
    """The planned transformation on a pure-JAX MLP lowers the loss below a tenth of the start, and ends within
    5% of the torch optimizer's loss, built from the same plan, on the same initial weights and batches (they
    agree to about four digits).
    (Blocked Shampoo is Shampoo's code path with blocks; its directions are checked against torch above.)"""
    x, y = digits
    cfg, options = TRAIN[name]
    opts = OptimizerDefaults(**{"lr": LR, **options})
    model = _torch_mlp()
    params = {"params": {f"Dense_{i}": {"kernel": jnp.asarray(layer.weight.detach().numpy().T),
                                        "bias": jnp.asarray(layer.bias.detach().numpy())}
                         for i, layer in enumerate([model[0], model[2]])}}
    batches = _batches(len(x))

    tx = build_optax(uniform_plan(params, cfg, opts), params)
    state = tx.init(params)

    @jax.jit
    def train_step(params, state, xb, yb):
        grads = jax.grad(_loss)(params, xb, yb)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    start = float(_loss(params, x, y))
    for idx in batches:
        params, state = train_step(params, state, x[idx], y[idx])
    end = float(_loss(params, x, y))

    opt = build_optimizer(uniform_plan(model, cfg, opts), model)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for idx in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    with torch.no_grad():
        torch_end = torch.nn.functional.cross_entropy(model(xt), yt).item()
    assert end < 0.1 * start
    assert abs(end - torch_end) < 0.05 * torch_end, (end, torch_end)
