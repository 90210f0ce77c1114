"""Issue 16 for the optax transformations: reference-formula parity (ungrafted Shampoo and Sketchy), roots that
never start at zero, and fault injection (huge, infinite, NaN and zero gradients; forced eigh/SVD/Newton
failures) that never leaves non-finite state. The torch side is ``test_parity.py``."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

from reference_directions import shampoo_directions, sketchy_directions  # noqa: E402
from sketchplan.kernels.jax import traced  # noqa: E402
from sketchplan.optimizers.jax import constructors as jx  # noqa: E402
from sketchplan.optimizers.jax.transform import SketchplanState, named_leaves  # noqa: E402

REFERENCE = dict(graft="none", momentum="none", betas=(0.0, 1.0), precondition_frequency=1,
                 start_preconditioning_step=1)


def _run(tx, grads, shape):
    params = {"w": jnp.zeros(shape, jnp.float32)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        upd, state = update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = {"w": params["w"] + upd["w"]}
        out.append((params, state, np.asarray(upd["w"], np.float64)))
    return out


@pytest.mark.parametrize("name", ["shampoo", "sketchy8", "sketchy48"])
def test_directions_match_the_reference_formulas(name):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((48, 32)) for _ in range(4)]
    if name == "shampoo":
        tx, ref = jx.shampoo(1.0, shampoo_eps=1e-12, **REFERENCE), shampoo_directions(grads, 1e-12, "relative")
    else:
        k = int(name[7:])
        tx, ref = jx.sketchy(1.0, rank=k, shampoo_eps=1e-12, **REFERENCE), sketchy_directions(grads, k, 1e-12,
                                                                                                 "relative")
    got = [-d for _, _, d in _run(tx, grads, (48, 32))]
    errs = [np.linalg.norm(a - r) / np.linalg.norm(r) for a, r in zip(got, ref)]
    assert max(errs[2:]) < 1e-5, errs


MAKERS = {
    "adam": lambda **kw: jx.adam(0.01, **kw),
    "extreme_tensoring": lambda **kw: jx.extreme_tensoring(0.01, **kw),
    "shampoo": lambda **kw: jx.shampoo(0.01, **kw, momentum="none", precondition_frequency=2),
    "shampoo-newton": lambda **kw: jx.shampoo(0.01, **kw, momentum="none", root_method="newton",
                                              precondition_frequency=2),
    "blocked": lambda **kw: jx.blocked_shampoo(0.01, **kw, block_size=16, momentum="none",
                                               precondition_frequency=2),
    "sketchy": lambda **kw: jx.sketchy(0.01, **kw, rank=4, momentum="none"),
    "kradagrad": lambda **kw: jx.kradagrad(0.01, **kw, momentum="none", precondition_frequency=2),
}
BAD = [1e20, 1e30, 3e38, -np.inf, np.nan, 0.0]


def _skips(state, params, name: str) -> int:
    """The ``nonfinite_skips`` counter of tensor ``name`` in a (possibly chained) sketchplan state."""
    s = next(x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, SketchplanState))
             if isinstance(x, SketchplanState))
    return int(s.factors[[n for n, _ in named_leaves(params)[0]].index(name)]["nonfinite_skips"])


def _finite(tree) -> bool:
    return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", list(MAKERS))
def test_bad_gradients_never_leave_nonfinite_state(name):
    """Two tensors, one with the bad value in one element and one filled with it; every bad step is followed by
    a healthy one, which must move both."""
    tx = MAKERS[name](nonfinite_guard=True)  # auto would leave it off for an all-elementwise tree
    update = jax.jit(tx.update)
    rng = np.random.default_rng(4)
    shape = (24, 20)
    params = {k: jnp.asarray(rng.standard_normal(shape), jnp.float32) for k in ("one", "all")}
    state = tx.init(params)
    for step in range(2 * len(BAD) + 1):
        grads = {k: rng.standard_normal(shape).astype(np.float32) for k in params}
        if step % 2 == 1:
            value = BAD[step // 2]
            grads["one"][5, 7] = value
            grads["all"][:] = value
        upd, state = update({k: jnp.asarray(v) for k, v in grads.items()}, state, params)
        params = {k: params[k] + upd[k] for k in params}
        assert _finite(params) and _finite(state), (step, name)
        if step % 2 == 0:
            assert all(float(jnp.abs(upd[k]).max()) > 0 for k in params), step
    for k in params:  # every bad value but the zero is skipped and counted
        assert _skips(state, params, k) == len(BAD) - 1, k


def _failing_eigh(mats):
    w, v = jnp.linalg.eigh(mats)
    return w, v, jnp.asarray(False)


def _failing_newton(mats, p, eps, max_iters, tol, mode="absolute"):
    return jnp.zeros_like(mats), jnp.asarray(jnp.inf, mats.dtype)


def _failing_update(u, sig2, rho, x, beta2, variant):
    return u, sig2, rho, jnp.asarray(False)


@pytest.mark.parametrize("name", ["shampoo", "shampoo-newton", "blocked", "sketchy", "kradagrad"])
def test_forced_failures_from_step_one_keep_the_update_finite_and_nonzero(name, monkeypatch):
    """Every decomposition fails from step 1 on: the update stays finite and non-zero (roots start safe)."""
    monkeypatch.setattr(traced, "_eigh", _failing_eigh)
    monkeypatch.setattr(traced, "_newton", _failing_newton)
    monkeypatch.setattr(traced, "_update", _failing_update)
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal((40, 12)) for _ in range(3)]
    for params, state, upd in _run(MAKERS[name](), grads, (40, 12)):
        assert np.isfinite(upd).all() and np.abs(upd).max() > 0
        assert _finite(state)
