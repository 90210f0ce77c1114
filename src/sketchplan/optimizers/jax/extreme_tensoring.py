"""JAX extreme tensoring (Chen, Agarwal, Hazan, Zhang & Zhang 2020): ``extreme_tensoring.ExtremeTensoringRule``.

The gradient is viewed as an order-p tensor of dims ``extreme_tensoring.tensor_dims`` (row-major); per mode i,
    a_i[j] ← β2 a_i[j] + Σ_{slice i=j} G²,     D = G / ∏_i (ε + a_i[j_i])^(1/(2p))
then EMA momentum (optional). State: ``extreme_tensoring.layout``.
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods.common import ema_weights
from ...methods.extreme_tensoring import tensor_dims
from .common import apply_momentum, sanitize

jax, jnp = require_jax()


def step(grad, state, step, cfg, opts):
    """(direction after momentum, new state) of one extreme-tensoring step for one parameter."""
    st = dict(state)
    grad = sanitize(st, grad, opts)
    decay, weight = ema_weights(opts.betas[1])
    dims = tensor_dims(tuple(grad.shape), opts.et_max_dim)
    order = len(dims)
    g = grad.astype(jnp.dtype(opts.state_dtype)).reshape(dims)
    sq = jnp.square(g)
    denom = None
    for i, d in enumerate(dims):
        others = tuple(j for j in range(order) if j != i)
        acc = st[f"et_acc{i}"] * decay + weight * (sq.sum(axis=others) if others else sq)
        st[f"et_acc{i}"] = acc
        factor = ((acc + opts.eps) ** (1.0 / (2 * order))).reshape([d if j == i else 1 for j in range(order)])
        denom = factor if denom is None else denom * factor
    return apply_momentum(st, (g / denom).reshape(grad.shape), opts.betas[0], opts.nesterov), st
