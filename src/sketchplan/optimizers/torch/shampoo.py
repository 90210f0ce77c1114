"""Shampoo in torch: Gram statistics, inverse roots and dense mode products as hooks of ``MatrixRule``.
The math, state layout, workspace and kernel calls are in ``methods.shampoo`` (blocked Shampoo is this class with
``block_size`` set).
"""

from __future__ import annotations

import torch

from ...kernels.torch.roots import eigh_power, inverse_root_newton, symmetric_power
from ...methods.common import stats_weights
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.shampoo import layout
from .base import SketchplanOptimizer, register
from .matrix import MATRIX_OPTIONS_DOC, MatrixRule, mode_apply, unfold


class ShampooRule(MatrixRule):
    """Shampoo's hooks for ``MatrixRule``: Gram statistics, inverse roots, dense mode products."""

    layout = staticmethod(layout)

    def update_statistics(self, state, g, grad_blocks, step, cfg, opts):
        decay, weight = stats_weights(opts.betas[1], opts.stats_every)
        for i in range(grad_blocks.dim() - 1):
            x = unfold(grad_blocks, i)
            state[f"blocks{g}.stat{i}"].baddbmm_(x, x.mT, beta=decay, alpha=weight)

    def refresh_roots(self, state, g, order, opts):
        for i in range(order):
            stat, root = state[f"blocks{g}.stat{i}"], state[f"blocks{g}.root{i}"]
            if opts.root_method == "newton":
                new = inverse_root_newton(stat, 2 * order, opts.shampoo_eps, previous=root, mode=opts.epsilon_mode)
            else:
                new = symmetric_power(stat, -1.0 / (2 * order), opts.shampoo_eps, previous=root,
                                      mode=opts.epsilon_mode)
            root.copy_(new)

    def precondition(self, state, g, grad_blocks, opts):
        return apply_roots(state, g, grad_blocks)

    batched_kernel = "roots"

    def run_batch(self, batch, states, grads, plans, cfg, opts):
        """One eigh for the statistics of every member (stacked in order), each member's slice of the result
        copied into its root. If eigh fails for the stack (float32 and float64), each member is refreshed on its
        own, so a failing block keeps only its own previous root."""
        d, order = batch.key
        stats = [states[m.tensor][f"blocks{m.group}.stat{m.axis}"] for m in batch.members]
        roots = [states[m.tensor][f"blocks{m.group}.root{m.axis}"] for m in batch.members]
        exponent = -1.0 / (2 * order)
        stacked = stats[0] if len(stats) == 1 else torch.cat(stats)
        new = eigh_power(stacked, exponent, opts.shampoo_eps, opts.epsilon_mode)
        del stacked
        if new is None:
            for stat, root in zip(stats, roots):
                root.copy_(symmetric_power(stat, exponent, opts.shampoo_eps, previous=root, mode=opts.epsilon_mode))
            return
        for root, at in zip(roots, batch.offsets()):
            root.copy_(new[at:at + root.shape[0]])


def apply_roots(state: dict, g: int, grad_blocks: torch.Tensor) -> torch.Tensor:
    """D = G ×_1 P_1 … ×_k P_k with the stored roots ``blocks{g}.root{i}`` (batched over the group's blocks)."""
    d = grad_blocks
    for i in range(d.dim() - 1):
        root = state[f"blocks{g}.root{i}"]
        d = mode_apply(d, i, lambda x, r=root: torch.bmm(r, x))
    return d


class Shampoo(SketchplanOptimizer):
    """Shampoo (Gupta, Koren & Singer 2018, "Shampoo: preconditioned stochastic tensor optimization"; Anil,
    Gupta, Koren, Regan & Singer 2020, "Scalable second order optimization for deep learning").

    Per block (dims d_1..d_k after merging/blocking) and axis i:
        S_i ← β2 S_i + (1−β2) G_(i) G_(i)ᵀ   (β2 = 1: running sum);
        P_i = (S_i + εI)^(−1/(2k)) every ``precondition_frequency`` steps;
        D = G ×_1 P_1 … ×_k P_k, norm-grafted per block, then momentum, weight decay and the step.

    Args:
        params: tensors or param-group dicts.
        block_size: None for full Shampoo (one block per tensor; dims above ``max_precond_dim`` fall back to
            the graft); an int B cuts every dimension into chunks of B (blocked Shampoo).
        root_method: ``eigh`` (float32, float64 retry, previous root kept if both fail) or ``newton``
            (coupled Newton iteration).
        packed: store statistics and roots as packed triangles (``methods.packing``; issue 19b).
    """

    def __init__(self, params, lr: float = 1e-3, block_size: int | None = None, graft: str = "adam",
                 momentum: str = "float32", root_method: str = "eigh", **options):
        method = "shampoo" if block_size is None else "blocked_shampoo"
        cfg = MethodConfig(method=method, block_size=block_size, graft=graft, momentum=momentum,
                           packed=options.pop("packed", False))
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, root_method=root_method, **options))


Shampoo.__doc__ += MATRIX_OPTIONS_DOC
register("shampoo", ShampooRule())
