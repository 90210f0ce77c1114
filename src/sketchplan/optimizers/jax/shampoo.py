"""JAX Shampoo and blocked Shampoo (Gupta, Koren & Singer 2018; Anil et al. 2020): ``shampoo.ShampooRule``'s hooks.

Per block group and axis i: S_i ← β2 S_i + (1−β2) G_(i) G_(i)ᵀ (``kernels.jax.products.gram_update``);
P_i = (S_i + εI)^(−1/(2k)) every ``precondition_frequency`` steps (eigh, or the coupled Newton iteration with
``root_method="newton"``; ``kernels.jax.traced``); D = G ×_1 P_1 … ×_k P_k (``kernels.jax.products.factor_apply``).
State: ``shampoo.layout`` (``blocks{g}.stat{i}``, ``blocks{g}.root{i}``, graft, momentum, skip counter).
"""

from __future__ import annotations

from ...kernels.jax import traced as jax_traced
from ...kernels.jax.products import factor_apply, gram_update
from ...methods.common import stats_weights
from .matrix import MatrixHooks, matrix_step, mode_apply, unfold


def apply_roots(st: dict, g: int, grad_blocks):
    """D = G ×_1 P_1 … ×_k P_k with the stored roots ``blocks{g}.root{i}`` (batched over the group's blocks)."""
    d = grad_blocks
    for i in range(d.ndim - 1):
        d = mode_apply(d, i, lambda x, r=st[f"blocks{g}.root{i}"]: factor_apply(r, x))
    return d


class ShampooHooks(MatrixHooks):
    def update_statistics(self, st, g, grad_blocks, step, cfg, opts):
        decay, weight = stats_weights(opts.betas[1], opts.stats_every)
        for i in range(grad_blocks.ndim - 1):
            name = f"blocks{g}.stat{i}"
            st[name] = gram_update(st[name], unfold(grad_blocks, i), decay, weight)

    def root_names(self, g, order):
        return [f"blocks{g}.root{i}" for i in range(order)]

    def refresh_roots(self, st, g, order, opts):
        out = {}
        for i in range(order):
            stat, root = st[f"blocks{g}.stat{i}"], st[f"blocks{g}.root{i}"]
            if opts.root_method == "newton":
                out[f"blocks{g}.root{i}"] = jax_traced.inverse_root_newton(stat, 2 * order, opts.shampoo_eps,
                                                                          previous=root, mode=opts.epsilon_mode)
            else:
                out[f"blocks{g}.root{i}"] = jax_traced.symmetric_power(stat, -1.0 / (2 * order), opts.shampoo_eps,
                                                                      previous=root, mode=opts.epsilon_mode)
        return out

    def precondition(self, st, g, grad_blocks, opts):
        return apply_roots(st, g, grad_blocks)


HOOKS = ShampooHooks()


def step(grad, state, step, cfg, opts):
    """(direction, new state) of one Shampoo (or blocked Shampoo) step for one parameter."""
    return matrix_step(HOOKS, grad, state, step, cfg, opts)
