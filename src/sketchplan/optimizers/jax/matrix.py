"""The JAX step shared by the Kronecker-factored methods (``optimizers.torch.matrix``; docs/algorithms.md, Shapes and Shampoo).

Per parameter, with the traced step t (1-based):

1. a non-finite gradient is replaced by zeros and counted (``common.sanitize``);
2. the graft's direction A (``common.graft_direction``);
3. the gradient is reshaped to its merged shape and cut into blocks (``blocking.partition``: the same blocks as
   torch and the planner); blocks of one shape are stacked (count, *block_shape) for the batched kernels;
4. the statistics are updated at steps 1, 1 + f, 1 + 2f, … for f = ``stats_every``
   (``MatrixHooks.update_statistics``, weights ``common.stats_weights``; ``lax.cond`` when f > 1); the roots are
   recomputed when
   t ≥ start and (t − start) is a multiple of ``precondition_frequency``, inside ``lax.cond`` so the
   eigendecompositions run only then (``MatrixHooks.refresh_roots``);
5. from ``start_preconditioning_step`` on (a second ``lax.cond``), the preconditioned direction of each block is
   norm-grafted, D ← D · ‖A‖_F / (‖D‖_F + tiny) (Agarwal, Anil, Hazan, Koren & Zhang 2020); before it, and for
   tensors that cannot be preconditioned (scalars, a dimension above ``max_precond_dim``), D = A;
6. EMA momentum (optionally Nesterov). Weight decay and the learning rate are applied by the transformation.
"""

from __future__ import annotations

from typing import Callable

from ...kernels.jax.support import require_jax
from ...methods.blocking import BlockGroup
from ...methods.blocking import config_plan, plan_partition
from ...methods.common import preconditioning_start
from ...methods.layout import MethodConfig, OptimizerDefaults
from .common import apply_momentum, graft_direction, sanitize

jax, jnp = require_jax()

_TINY = 1e-30


def to_blocks(t, groups: tuple[BlockGroup, ...]) -> list:
    """Stack the blocks of each group: one (count, *block_shape) array per group."""
    if len(groups) == 1 and groups[0].count == 1:
        return [t[None]]
    return [jnp.stack([t[s] for s in g.slices]) for g in groups]


def from_blocks(blocks: list, groups: tuple[BlockGroup, ...], shape: tuple[int, ...]):
    """Inverse of ``to_blocks``."""
    if len(groups) == 1 and groups[0].count == 1:
        return blocks[0][0]
    out = jnp.zeros(shape, blocks[0].dtype)
    for g, b in zip(groups, blocks):
        for j, s in enumerate(g.slices):
            out = out.at[s].set(b[j])
    return out


def unfold(blocks, axis: int):
    """Mode-``axis`` unfolding of stacked blocks (count, d_1..d_k) → (count, d_axis, ∏_{j≠axis} d_j)."""
    moved = jnp.moveaxis(blocks, axis + 1, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def mode_apply(blocks, axis: int, fn: Callable):
    """Apply a batched linear map ``fn`` (count, d, m) → (count, d, m) along mode ``axis``: G ×_axis P."""
    moved = jnp.moveaxis(blocks, axis + 1, 1)
    out = fn(moved.reshape(moved.shape[0], moved.shape[1], -1))
    return jnp.moveaxis(out.reshape(moved.shape), 1, axis + 1)


def graft_blocks(d, a):
    """Per block: D · ‖A‖_F / (‖D‖_F + tiny)."""
    axes = tuple(range(1, d.ndim))
    scale = jnp.sqrt(jnp.sum(a * a, axis=axes)) / (jnp.sqrt(jnp.sum(d * d, axis=axes)) + _TINY)
    return d * scale.reshape((-1,) + (1,) * len(axes))


class MatrixHooks:
    """A matrix method's three hooks (state names ``blocks{g}.<name>{i}`` as in its ``layout``). Each reads the
    state dict ``st``; ``update_statistics`` writes into it, ``refresh_roots`` returns the new roots by name."""

    def update_statistics(self, st: dict, g: int, grad_blocks, step, cfg: MethodConfig,
                          opts: OptimizerDefaults) -> None:
        raise NotImplementedError

    def root_names(self, g: int, order: int) -> list[str]:
        """State names of the stored roots of block group ``g`` (none for methods without stored roots)."""
        return []

    def refresh_roots(self, st: dict, g: int, order: int, opts: OptimizerDefaults) -> dict:
        """New stored roots, keyed by ``root_names``."""
        return {}

    def precondition(self, st: dict, g: int, grad_blocks, opts: OptimizerDefaults):
        raise NotImplementedError


def matrix_step(hooks: MatrixHooks, grad, state: dict, step, cfg: MethodConfig, opts: OptimizerDefaults):
    """One step of a matrix method for one parameter: (direction after momentum, new state). Module docstring."""
    st = dict(state)
    grad = sanitize(st, grad, opts)
    g = grad.astype(jnp.dtype(opts.state_dtype))
    a = graft_direction(st, g, cfg.graft, opts, step)
    mp = config_plan(tuple(grad.shape), cfg, opts)
    direction = a
    if mp.fallback is None:
        groups = plan_partition(mp)
        g_blocks = to_blocks(g.reshape(mp.merged), groups)

        def with_statistics(s):
            s = dict(s)
            for gi, gb in enumerate(g_blocks):
                hooks.update_statistics(s, gi, gb, step, cfg, opts)
            return s

        if opts.stats_every == 1:
            st = with_statistics(st)
        else:  # step skipping: the sampled gradient stands for the skipped ones (``common.stats_weights``)
            st = jax.lax.cond((step - 1) % opts.stats_every == 0, with_statistics, dict, st)
        start = preconditioning_start(opts, bool(hooks.root_names(0, mp.order)))
        refresh = (step >= start) & ((step - start) % opts.precondition_frequency == 0)
        for gi in range(len(groups)):
            names = hooks.root_names(gi, mp.order)
            if names:
                new = jax.lax.cond(refresh, lambda s, gi=gi: hooks.refresh_roots(s, gi, mp.order, opts),
                                   lambda s: {n: s[n] for n in names}, st)
                st.update(new)

        def preconditioned(s):
            a_blocks = to_blocks(a.reshape(mp.merged), groups)
            d_blocks = [hooks.precondition(s, gi, gb, opts) for gi, gb in enumerate(g_blocks)]
            if cfg.graft != "none":
                d_blocks = [graft_blocks(d, ab) for d, ab in zip(d_blocks, a_blocks)]
            return from_blocks(d_blocks, groups, mp.merged).reshape(grad.shape)

        direction = jax.lax.cond(step >= start, preconditioned, lambda s: a, st)
    return apply_momentum(st, direction, opts.betas[0], opts.nesterov), st
