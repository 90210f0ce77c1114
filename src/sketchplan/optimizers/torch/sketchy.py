"""Sketchy in torch: an FD update per axis (``kernels.torch.frequent_directions``) and the low-rank inverse root
applied from the sketch, as hooks of ``MatrixRule``. Math, state layout, workspace and kernel calls:
``methods.sketchy``.
"""

from __future__ import annotations

import torch

from ...kernels.torch.frequent_directions import fd_update
from ...kernels.torch.lowrank import lowrank_root_apply
from ...methods.common import stats_weights
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.sketchy import layout, member_blocks_copied
from .base import SketchplanOptimizer, register
from .matrix import MATRIX_OPTIONS_DOC, MatrixRule, mode_apply, plan_partition, unfold


class SketchyRule(MatrixRule):
    """Sketchy's hooks for ``MatrixRule``: an FD update per axis every step; the inverse root is applied from
    the sketch directly (no stored root, so ``precondition_frequency`` does not apply to Sketchy)."""

    layout = staticmethod(layout)
    stored_roots = False

    def update_statistics(self, state, g, grad_blocks, step, cfg, opts):
        decay, weight = stats_weights(opts.betas[1], opts.stats_every)
        for i in range(grad_blocks.dim() - 1):
            x = unfold(grad_blocks, i)
            if weight != 1.0:
                x = x * weight**0.5
            u, sig2, rho = (state[f"blocks{g}.{n}{i}"] for n in ("U", "sig2_", "rho"))
            new = fd_update(u, sig2, rho, x, decay, opts.fd_variant)
            for old, value in zip((u, sig2, rho), new):
                old.copy_(value)

    batched_kernel = "stats"

    def run_batch(self, batch, states, grads, plans, cfg, opts):
        """One FD update for the blocks of every member: their mode-``axis`` unfoldings copied from the gradients
        (each member's blocks stacked first) into one (count, d, m) stack (cast to the state dtype by the copy),
        the sketches stacked in the same order, each member's slice of the new sketch copied back
        (``methods.sketchy.fd_batch`` replays it). If the stack's update fails (an eigh or QR that float32 and
        float64 both refuse: ``fd_update`` then returns its inputs), each member is updated on its own from its
        slice of the stack, so a failing tensor keeps only its own sketch, as stepping tensor by tensor does."""
        d, k, m = batch.key
        x = grads[batch.members[0].tensor].new_empty((batch.count, d, m), dtype=getattr(torch, opts.state_dtype))
        for mem, at in zip(batch.members, batch.offsets()):
            mp = plans[mem.tensor]
            merged = grads[mem.tensor].reshape(mp.merged)
            if member_blocks_copied(mp):  # contiguous blocks first: the unfolding then transposes within a block
                blocks = torch.stack([merged[sl] for sl in plan_partition(mp)[mem.group].slices])
            else:
                blocks = merged.unsqueeze(0)
            moved = blocks.movedim(mem.axis + 1, 1)
            x[at:at + mem.count].view(moved.shape).copy_(moved)
            del blocks, moved
        decay, weight = stats_weights(opts.betas[1], opts.stats_every)
        if weight != 1.0:
            x.mul_(weight**0.5)
        parts = [[states[mm.tensor][f"blocks{mm.group}.{n}{mm.axis}"] for mm in batch.members]
                 for n in ("U", "sig2_", "rho")]
        stacked = [p[0] if len(p) == 1 else torch.cat(p) for p in parts]
        new = fd_update(*stacked, x, decay, opts.fd_variant)
        if new[0] is stacked[0]:  # the update failed: nothing changed
            del new, stacked
            if len(batch.members) > 1:  # each member on its own, so only a failing one keeps its sketch
                for mem, at, *sketch in zip(batch.members, batch.offsets(), *parts):
                    one = fd_update(*sketch, x[at:at + mem.count], decay, opts.fd_variant)
                    for old, value in zip(sketch, one):
                        if value is not old:
                            old.copy_(value)
                    del one
            return
        for olds, value in zip(parts, new):
            for old, at in zip(olds, batch.offsets()):
                old.copy_(value[at:at + old.shape[0]])

    def precondition(self, state, g, grad_blocks, opts):
        order = grad_blocks.dim() - 1
        d = grad_blocks
        for i in range(order):
            u, sig2, rho = (state[f"blocks{g}.{n}{i}"] for n in ("U", "sig2_", "rho"))
            d = mode_apply(d, i, lambda x, u=u, s=sig2, r=rho: lowrank_root_apply(
                u, s, r, x, -1.0 / (2 * order), opts.shampoo_eps, opts.epsilon_mode))
        return d


class Sketchy(SketchplanOptimizer):
    """Sketchy (Feinberg, Chen, Sun, Anil & Hazan 2023, "Sketchy: memory-efficient adaptive regularization with
    Frequent Directions"): Shampoo whose statistics are Frequent-Directions sketches.

    Per block and axis i (docs/algorithms.md, Frequent Directions and Sketchy), with α = −1/(2k) for a block of order k:
        (U_i, σ_i², ρ_i) ← FD-update with the columns of √(1−β2)·G_(i)   (β2 = 1: of G_(i));
        Ŝ_i = U_i diag(σ_i²) U_iᵀ + ρ_i I;
        D = G ×_1 (Ŝ_1 + εI)^α … ×_k (Ŝ_k + εI)^α, applied in O(d·k) per column without d×d matrices;
    then per-block norm grafting, momentum, weight decay and the step. With rank ≥ every dimension, β2 = 1 and
    ε → 0 this is Shampoo with ``precondition_frequency = 1``.

    Args:
        params: tensors or param-group dicts.
        rank: sketch rank k (k_i = min(k, d_i) per axis).
        block_size: optional block size B (None: one block per tensor, subject to ``max_precond_dim``).
        fd_variant: FD-update kernel (``auto``, the exact ``svd``, ``gram_small``, ``gram_large``, ``qr_svd``, or
            the approximate ``subspace``: ``kernels.torch.frequent_directions``).
    """

    def __init__(self, params, lr: float = 1e-3, rank: int = 128, block_size: int | None = None,
                 graft: str = "adam", momentum: str = "float32", fd_variant: str = "auto", **options):
        cfg = MethodConfig(method="sketchy", rank=rank, block_size=block_size, graft=graft, momentum=momentum)
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, fd_variant=fd_variant, **options))


Sketchy.__doc__ += MATRIX_OPTIONS_DOC
register("sketchy", SketchyRule())
