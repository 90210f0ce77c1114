"""JAX SOAP (Vyas et al. 2024): ``soap.SoapRule``'s step (math, state and costs in ``methods.soap``).

Per parameter, with the traced step t: momentum M in the original space; per block group the rotations
G' = G ×_i Q_iᵀ and M' = M ×_i Q_iᵀ, V ← β2 V + (1−β2) G'², N = (M'/bc1)/(√(V/bc2)+ε) ×_i Q_i; then the
statistics L_i (Shampoo's ``gram_update``) and, on refresh steps (``lax.cond``), the basis: eigh the first time
(``start_preconditioning_step``), else one power-iteration step and QR with the estimates sorted and V permuted
alike. A non-finite eigh or QR keeps the basis. eigh and QR are ``kernels.jax.traced``'s (one matrix at a time on
CPU with several devices, avoiding jaxlib's batched-LAPACK stall). Returns the direction; the transformation applies −η(D + λW).
"""

from __future__ import annotations

from ...kernels.jax.products import gram_update
from ...kernels.jax.traced import eigh, qr_q
from ...kernels.jax.support import require_jax
from ...methods.blocking import config_plan, plan_partition
from ...methods.common import ema_weights, stats_weights
from .common import apply_momentum, bias_correction, sanitize
from .matrix import from_blocks, mode_apply, to_blocks, unfold

jax, jnp = require_jax()


def rotate(st: dict, g: int, blocks, into: bool):
    """X ×_1 Q_1ᵀ … ×_k Q_kᵀ (``into``) or X ×_1 Q_1 … ×_k Q_k, batched over the group."""
    x = blocks
    for i in range(blocks.ndim - 1):
        q = st[f"blocks{g}.basis{i}"]
        q = jnp.swapaxes(q, -1, -2) if into else q
        x = mode_apply(x, i, lambda y, q=q: q @ y)
    return x


def _adam(m, v, bc1, bc2, eps: float):
    return (m / bc1) / (jnp.sqrt(v / bc2) + eps)


def _first_basis(st: dict, g: int, order: int) -> dict:
    out = {}
    for i in range(order):
        q = st[f"blocks{g}.basis{i}"]
        _, vecs, ok = eigh(st[f"blocks{g}.stat{i}"])
        out[f"blocks{g}.basis{i}"] = jnp.where(ok, jnp.flip(vecs, -1), q)
    out[f"blocks{g}.exp_avg_sq"] = st[f"blocks{g}.exp_avg_sq"]
    return out


def _qr_basis(st: dict, g: int, order: int) -> dict:
    v = st[f"blocks{g}.exp_avg_sq"]
    out = {}
    for i in range(order):
        stat, q = st[f"blocks{g}.stat{i}"], st[f"blocks{g}.basis{i}"]
        lq = stat @ q
        est = jnp.sum(q * lq, axis=-2)
        idx = jnp.argsort(-est, axis=-1, stable=True)
        power = jnp.take_along_axis(lq, idx[:, None, :], axis=-1)
        new = qr_q(power)
        ok = jnp.isfinite(new).all()
        out[f"blocks{g}.basis{i}"] = jnp.where(ok, new, q)
        shape = [1] * v.ndim
        shape[0], shape[i + 1] = idx.shape[0], idx.shape[1]
        v = jnp.where(ok, jnp.take_along_axis(v, idx.reshape(shape), axis=i + 1), v)
    out[f"blocks{g}.exp_avg_sq"] = v
    return out


def step(grad, state, step, cfg, opts):
    """(direction, new state) of one SOAP step for one parameter."""
    st = dict(state)
    grad = sanitize(st, grad, opts)
    beta1, beta2 = opts.betas
    g = grad.astype(jnp.dtype(opts.state_dtype))
    m = apply_momentum(st, g, beta1, opts.nesterov)
    bc1 = bias_correction(beta1, step) if "momentum" in st else 1.0
    bc2 = bias_correction(beta2, step)
    decay, weight = ema_weights(beta2)
    mp = config_plan(tuple(grad.shape), cfg, opts)
    if mp.fallback is not None:
        v = st["exp_avg_sq"] * decay + weight * (g * g)
        st["exp_avg_sq"] = v
        return _adam(m, v, bc1, bc2, opts.eps), st
    groups = plan_partition(mp)
    g_blocks = to_blocks(g.reshape(mp.merged), groups)
    m_blocks = to_blocks(m.reshape(mp.merged), groups)
    d_blocks = []
    for gi, (gb, mb) in enumerate(zip(g_blocks, m_blocks)):
        gp = rotate(st, gi, gb, True)
        v = st[f"blocks{gi}.exp_avg_sq"] * decay + weight * (gp * gp)
        st[f"blocks{gi}.exp_avg_sq"] = v
        d_blocks.append(rotate(st, gi, _adam(rotate(st, gi, mb, True), v, bc1, bc2, opts.eps), False))
    direction = from_blocks(d_blocks, groups, mp.merged).reshape(grad.shape)
    sdecay, sweight = stats_weights(beta2, opts.stats_every)

    def with_statistics(s):
        s = dict(s)
        for gi, gb in enumerate(g_blocks):
            for i in range(gb.ndim - 1):
                name = f"blocks{gi}.stat{i}"
                s[name] = gram_update(s[name], unfold(gb, i), sdecay, sweight)
        return s

    if opts.stats_every == 1:
        st = with_statistics(st)
    else:
        st = jax.lax.cond((step - 1) % opts.stats_every == 0, with_statistics, dict, st)
    start = max(1, opts.start_preconditioning_step)
    refresh = (step >= start) & ((step - start) % opts.precondition_frequency == 0)
    for gi in range(len(groups)):
        names = [f"blocks{gi}.basis{i}" for i in range(mp.order)] + [f"blocks{gi}.exp_avg_sq"]
        keep = lambda s, names=names: {n: s[n] for n in names}  # noqa: E731
        first = lambda s, gi=gi: _first_basis(s, gi, mp.order)  # noqa: E731
        later = lambda s, gi=gi: _qr_basis(s, gi, mp.order)  # noqa: E731
        new = jax.lax.cond(refresh, lambda s: jax.lax.cond(step == start, first, later, s), keep, st)
        st.update(new)
    return direction, st
