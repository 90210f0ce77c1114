"""JAX KrADagrad (Mei, Moreno & Walters 2023): ``kradagrad.KrADagradRule``'s hooks.

Per block group and axis i (every axis each step for ``star``; axis (t−1) mod k at step t for ``mm``, selected
with ``lax.cond``), with X = √(1−β2)·G_(i) (or G_(i) when β2 = 1) and L̃₀ = I/ε:
    L̃ ← L̃/β2;   L̃ ← L̃ − (L̃X)(L̃X)ᵀ / (1 + ‖X Xᵀ L̃‖_F);   L̃ ← (L̃ + L̃ᵀ)/2      (X: d × n; the authors'
    implementation, see ``optimizers.torch.kradagrad``)
Roots P_i = L̃_i^(1/(2k)) (eigh, eigenvalues clamped at 0; ``kernels.jax.traced``) every
``precondition_frequency`` steps; direction Shampoo's mode products. State: ``kradagrad.layout``.
"""

from __future__ import annotations

from ...kernels.jax import traced as jax_traced
from ...kernels.jax.products import factor_apply
from ...kernels.jax.support import require_jax
from ...methods.common import stats_weights
from ...methods.kradagrad import mm_axis
from .matrix import MatrixHooks, matrix_step, unfold
from .shampoo import apply_roots

jax, jnp = require_jax()


def _woodbury(inv, x, decay: float):
    if decay != 1.0:
        inv = inv / decay
    # as torch: L̃XXᵀL̃ / (1 + ‖XXᵀL̃‖_F) from X̂ = X/‖X‖, so that ‖XXᵀL̃‖_F (~‖X‖²/ε) cannot overflow float32
    sq = jnp.maximum(jnp.sum(x * x, axis=(1, 2)), jnp.finfo(x.dtype).tiny)
    xh = x / jnp.sqrt(sq)[:, None, None]
    lx = factor_apply(inv, xh)
    cross = xh @ jnp.swapaxes(lx, -1, -2)
    norm = jnp.sqrt(jnp.sum(cross * cross, axis=(1, 2)))
    inv = inv - (lx @ jnp.swapaxes(lx, -1, -2)) / (1 / sq + norm)[:, None, None]
    return (inv + jnp.swapaxes(inv, -1, -2)) / 2


class KrADagradHooks(MatrixHooks):
    def update_statistics(self, st, g, grad_blocks, step, cfg, opts):
        order = grad_blocks.ndim - 1
        decay, weight = stats_weights(opts.betas[1], opts.stats_every)
        for i in range(order):
            x = unfold(grad_blocks, i)
            if weight != 1.0:
                x = x * weight**0.5
            name = f"blocks{g}.inv{i}"
            if opts.kradagrad_variant == "star" or order == 1:
                st[name] = _woodbury(st[name], x, decay)
            else:
                st[name] = jax.lax.cond(mm_axis(step, opts.stats_every, order) == i,
                                        lambda l, x=x: _woodbury(l, x, decay),
                                        lambda l: l, st[name])

    def root_names(self, g, order):
        return [f"blocks{g}.root{i}" for i in range(order)]

    def refresh_roots(self, st, g, order, opts):
        return {f"blocks{g}.root{i}": jax_traced.symmetric_power(st[f"blocks{g}.inv{i}"], 1.0 / (2 * order), 0.0,
                                                                 previous=st[f"blocks{g}.root{i}"])
                for i in range(order)}

    def precondition(self, st, g, grad_blocks, opts):
        return apply_roots(st, g, grad_blocks)


HOOKS = KrADagradHooks()


def step(grad, state, step, cfg, opts):
    """(direction, new state) of one KrADagrad step for one parameter."""
    return matrix_step(HOOKS, grad, state, step, cfg, opts)
