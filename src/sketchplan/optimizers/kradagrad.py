"""KrADagrad (Mei, Moreno & Walters 2023): Kronecker-factored AdaGrad that tracks the INVERSE statistics.

KrADagrad* per block and axis, with L̃₀ = I/ε:
    L̃ ← L̃/β2;   L̃ ← L̃ − L̃ G Gᵀ L̃ / (m · (1 + tr(Gᵀ L̃ G)))      (same for R̃ with Gᵀ and n)
a Woodbury step with the small inverse replaced by a scalar; the result dominates the exact inverse in Loewner
order, so float32 suffices. Roots P = L̃^(1/(2k)) by eigh (eigenvalues clamped at 0) every
``precondition_frequency`` steps; direction P_L G P_R, always norm-grafted. The "MM" variant updates one mode
per step with the other held fixed.

State like Shampoo's: ``blocks{g}.inv{i}`` and ``blocks{g}.root{i}`` (count, d_i, d_i) per block group, plus
graft, momentum and the skip counter. Optional ``block_size`` blocks it like blocked Shampoo.
"""

from __future__ import annotations

import math

import torch

from ..kernels.calls import KernelCall, gemm, pointwise
from ..kernels.roots import symmetric_power
from .base import SketchplanOptimizer, register
from .common import diagonal_tail, stats_weights
from .layout import MethodConfig, OptimizerDefaults, StateTensor
from .matrix import MATRIX_OPTIONS_DOC, MatrixRule, unfold
from .shampoo import apply_roots, apply_roots_calls, factor_layout, factor_workspace, plan_for
from .step_calls import matrix_frame_calls, unfold_copies


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors KrADagrad allocates for one parameter."""
    mp = plan_for(shape, cfg, opts)
    return factor_layout(mp, ("inv", "root"), opts.state_dtype) + diagonal_tail(shape, cfg, opts)


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    return factor_workspace(plan_for(shape, cfg, opts), shape, opts.state_dtype)


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The kernel calls one KrADagrad step makes (``KrADagradRule`` through ``MatrixRule.step_param``).

    Per block group and axis i (every ``stats_every`` steps for ``star``; ``order`` times less often for ``mm``,
    one axis per statistics step):
    L̃ X as ``gemm(d, n, d)``, (L̃X)(L̃X)ᵀ as ``gemm(d, d, n)`` (n = numel/d), the trace and the elementwise
    division, subtraction and symmetrisation of L̃; the positive root ``inv_root(d)`` by eigh (no other
    variant) every ``precondition_frequency`` steps; then Shampoo's mode products and the shared frame.
    """
    mp = plan_for(shape, cfg, opts)
    calls = matrix_frame_calls(shape, mp, cfg, opts)
    pf = opts.precondition_frequency
    decay, weight = stats_weights(opts.betas[1], opts.stats_every)
    for bshape, count in mp.groups:
        bnumel = math.prod(bshape)
        every = opts.stats_every * (1 if opts.kradagrad_variant == "star" else len(bshape))
        for i, d in enumerate(bshape):
            n = bnumel // d
            copies = (1 if unfold_copies(i, len(bshape)) else 0) + (1 if weight != 1.0 else 0) + 2
            calls.append(pointwise(count * bnumel, copies, every))
            calls.append(pointwise(count * d * d, 5 + (1 if decay != 1.0 else 0), every))
            calls.append(gemm(d, n, d, count, every))
            calls.append(gemm(d, d, n, count, every))
            calls.append(KernelCall("inv_root", (d,), count, pf, variant="eigh"))
            calls.append(pointwise(count * d * d, every=pf))
    return calls + apply_roots_calls(mp)


class KrADagradRule(MatrixRule):
    """KrADagrad's hooks for ``MatrixRule``: inverse statistics updated without inversion, positive roots."""

    layout = staticmethod(layout)

    def init_state(self, state, shape, cfg, opts):
        """L̃₀ = I/ε for every inverse statistic."""
        for name, t in state.items():
            if ".inv" in name:
                t.copy_(torch.eye(t.shape[-1], dtype=t.dtype, device=t.device) / opts.shampoo_eps)

    def update_statistics(self, state, g, grad_blocks, step, cfg, opts):
        order = grad_blocks.dim() - 1
        decay, weight = stats_weights(opts.betas[1], opts.stats_every)
        axes = range(order) if opts.kradagrad_variant == "star" else [(step - 1) % order]
        for i in axes:
            x = unfold(grad_blocks, i)
            if weight != 1.0:
                x = x * weight**0.5
            inv = state[f"blocks{g}.inv{i}"]
            if decay != 1.0:
                inv.div_(decay)
            lx = torch.bmm(inv, x)
            trace = (x * lx).sum(dim=(1, 2))
            inv.sub_(torch.bmm(lx, lx.mT) / (x.shape[1] * (1 + trace))[:, None, None])
            inv.copy_((inv + inv.mT) / 2)

    def refresh_roots(self, state, g, order, opts):
        for i in range(order):
            inv, root = state[f"blocks{g}.inv{i}"], state[f"blocks{g}.root{i}"]
            root.copy_(symmetric_power(inv, 1.0 / (2 * order), 0.0, previous=root))

    def precondition(self, state, g, grad_blocks, opts):
        return apply_roots(state, g, grad_blocks)


class KrADagrad(SketchplanOptimizer):
    """KrADagrad (Mei, Moreno & Walters 2023, "KrADagrad: Kronecker approximation-domination gradient
    preconditioned stochastic optimization", UAI).

    Tracks L̃ ≈ S⁻¹ per block and axis without inverting anything (KrADagrad*, L̃₀ = I/ε):
        L̃ ← L̃/β2;   L̃ ← L̃ − L̃ X Xᵀ L̃ / (d · (1 + tr(Xᵀ L̃ X)))     (X = √(1−β2)·G_(i), or G_(i) when β2 = 1)
    a Woodbury step whose small inverse is replaced by a scalar no larger than its smallest eigenvalue, so L̃
    dominates the exact inverse (εI + Σ G Gᵀ)⁻¹ in Loewner order and float32 suffices. Roots P_i = L̃_i^(1/(2k))
    (positive powers, eigenvalues clamped at 0) every ``precondition_frequency`` steps; D = G ×_1 P_1 … ×_k P_k,
    norm-grafted per block. ``variant="mm"`` updates one axis per step, cycling through the axes (our reading
    of the paper's alternating variant: the other factors are held fixed that step).

    Args:
        params: tensors or param-group dicts.
        variant: ``star`` (every axis every step) or ``mm`` (one axis per step).
        block_size: optional block size B.
    """

    def __init__(self, params, lr: float = 1e-3, variant: str = "star", block_size: int | None = None,
                 graft: str = "adam", momentum: str = "float32", **options):
        cfg = MethodConfig(method="kradagrad", block_size=block_size, graft=graft, momentum=momentum)
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, kradagrad_variant=variant, **options))


KrADagrad.__doc__ += MATRIX_OPTIONS_DOC
register("kradagrad", KrADagradRule())
