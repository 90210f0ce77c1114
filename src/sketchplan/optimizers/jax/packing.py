"""Packed symmetric factors in JAX: the rectangular full packed format of ``methods.packing`` (issue 19b), the
same arrays as ``optimizers.torch.packing`` (a packed state is interchangeable between the backends).

``unpack_state`` replaces a tensor's packed factors by full squares before the step; ``pack_state`` writes the
squares back after it (``lax.cond`` keeps the unchanged ones: statistics change on statistics steps, roots on
refresh steps).
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods.common import preconditioning_start
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.packing import PACKED_FACTORS, halves, is_packed_name, rfp_shape

jax, jnp = require_jax()


def side(numel: int) -> int:
    """d with d(d+1)/2 = numel."""
    d = int(((8 * numel + 1) ** 0.5 - 1) / 2)
    while d * (d + 1) // 2 < numel:
        d += 1
    return d


def unpack(flat, d: int):
    """Full symmetric (count, d, d) matrices of packed ``flat`` (count, d(d+1)/2)."""
    rows, n1 = rfp_shape(d)
    _, n2 = halves(d)
    rect = flat.reshape(flat.shape[0], rows, n1)
    top = rect[:, :n2 + 1]
    a11, a22, a21 = top[:, n2 + 1 - n1:], top[:, :n2, n1 - n2:], rect[:, n2 + 1:]
    t = lambda x: jnp.swapaxes(x, -1, -2)  # noqa: E731
    f11 = jnp.tril(a11) + t(jnp.tril(a11, -1))
    f22 = jnp.triu(a22) + t(jnp.triu(a22, 1))
    upper = jnp.concatenate([f11, t(a21)], axis=-1)
    lower = jnp.concatenate([a21, f22], axis=-1)
    return jnp.concatenate([upper, lower], axis=-2)


def pack(full):
    """Packed (count, d(d+1)/2) of symmetric ``full`` (count, d, d)."""
    count, d = full.shape[0], full.shape[-1]
    rows, n1 = rfp_shape(d)
    _, n2 = halves(d)
    top = jnp.zeros((count, n2 + 1, n1), full.dtype)
    top = top.at[:, n2 + 1 - n1:].add(jnp.tril(full[:, :n1, :n1]))
    top = top.at[:, :n2, n1 - n2:].add(jnp.triu(full[:, n1:, n1:]))
    rect = jnp.concatenate([top, full[:, n1:, :n1]], axis=1)
    return rect.reshape(count, rows * n1)


def unpack_state(st: dict, cfg: MethodConfig) -> dict:
    """``st`` with ``cfg``'s packed factors as full squares (``st`` itself when nothing is packed)."""
    if not cfg.packed:
        return st
    return {k: (unpack(v, side(v.shape[-1])) if is_packed_name(cfg.method, k) else v) for k, v in st.items()}


def pack_state(new: dict, old: dict, cfg: MethodConfig, opts: OptimizerDefaults, step) -> dict:
    """The state after the step with its factors packed again; a factor the step did not change (statistics off
    statistics steps, roots off refresh steps) keeps its packed array as it was."""
    if not cfg.packed:
        return new
    stats, roots = PACKED_FACTORS[cfg.method]
    start = preconditioning_start(opts, stored_roots=True)  # the methods with packed roots store them
    stat_step = (step - 1) % opts.stats_every == 0
    root_step = (step >= start) & ((step - start) % opts.precondition_frequency == 0)
    out = dict(new)
    for k in new:
        if is_packed_name(cfg.method, k):
            kind = k.split(".", 1)[1].rstrip("0123456789")
            changed = stat_step if kind in stats else root_step
            out[k] = jax.lax.cond(changed, lambda f: pack(f), lambda f, o=old[k]: o, new[k])
    return out


__all__ = ["pack", "pack_state", "unpack", "unpack_state"]
