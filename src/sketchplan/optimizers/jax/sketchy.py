"""JAX Sketchy (Feinberg, Chen, Sun, Anil & Hazan 2023): ``sketchy.SketchyRule``'s hooks.

Per block group and axis i, every step: an FD update (Liberty 2013; Ghashami et al. 2016) of (U_i, σ_i², ρ_i)
with the columns of √(1−β2)·G_(i) (``kernels.jax.traced.fd_update``); the direction applies
(Ŝ_i + εI)^α, α = −1/(2k), from the sketch without a d×d matrix (``kernels.jax.lowrank.lowrank_root_apply``).
No stored roots, so ``precondition_frequency`` does not apply. State: ``sketchy.layout``.
"""

from __future__ import annotations

from ...kernels.jax import traced as jax_traced
from ...kernels.jax.lowrank import lowrank_root_apply
from ...methods.common import stats_weights
from .matrix import MatrixHooks, matrix_step, mode_apply, unfold


class SketchyHooks(MatrixHooks):
    def update_statistics(self, st, g, grad_blocks, step, cfg, opts):
        decay, weight = stats_weights(opts.betas[1], opts.stats_every)
        for i in range(grad_blocks.ndim - 1):
            x = unfold(grad_blocks, i)
            if weight != 1.0:
                x = x * weight**0.5
            names = [f"blocks{g}.{n}{i}" for n in ("U", "sig2_", "rho")]
            new = jax_traced.fd_update(*(st[n] for n in names), x, decay, opts.fd_variant)
            st.update(zip(names, new))

    def precondition(self, st, g, grad_blocks, opts):
        order = grad_blocks.ndim - 1
        d = grad_blocks
        for i in range(order):
            u, sig2, rho = (st[f"blocks{g}.{n}{i}"] for n in ("U", "sig2_", "rho"))
            d = mode_apply(d, i, lambda x, u=u, s=sig2, r=rho: lowrank_root_apply(
                u, s, r, x, -1.0 / (2 * order), opts.shampoo_eps, opts.epsilon_mode))
        return d


HOOKS = SketchyHooks()


def step(grad, state, step, cfg, opts):
    """(direction, new state) of one Sketchy step for one parameter."""
    return matrix_step(HOOKS, grad, state, step, cfg, opts)
