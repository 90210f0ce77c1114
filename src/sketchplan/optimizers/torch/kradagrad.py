"""KrADagrad in torch: inverse statistics updated without inversion and positive roots, as hooks of
``MatrixRule``. Math, state layout, workspace and kernel calls: ``methods.kradagrad``.
"""

from __future__ import annotations

import torch

from ...kernels.torch.roots import symmetric_power
from ...methods.common import stats_weights
from ...methods.kradagrad import layout, mm_axis
from ...methods.layout import MethodConfig, OptimizerDefaults
from .base import SketchplanOptimizer, register
from .matrix import MATRIX_OPTIONS_DOC, MatrixRule, unfold
from .shampoo import apply_roots


class KrADagradRule(MatrixRule):
    """KrADagrad's hooks for ``MatrixRule``: inverse statistics updated without inversion, positive roots."""

    layout = staticmethod(layout)

    def update_statistics(self, state, g, grad_blocks, step, cfg, opts):
        order = grad_blocks.dim() - 1
        decay, weight = stats_weights(opts.betas[1], opts.stats_every)
        axes = range(order) if opts.kradagrad_variant == "star" else [mm_axis(step, opts.stats_every, order)]
        for i in axes:
            x = unfold(grad_blocks, i)
            if weight != 1.0:
                x = x * weight**0.5
            inv = state[f"blocks{g}.inv{i}"]
            if decay != 1.0:
                inv.div_(decay)
            # L̃XXᵀL̃ / (1 + ‖XXᵀL̃‖_F) computed from X̂ = X/‖X‖ as L̃X̂X̂ᵀL̃ / (1/‖X‖² + ‖X̂X̂ᵀL̃‖_F):
            # the same number, but ‖XXᵀL̃‖_F (~‖X‖²/ε) cannot overflow float32 for a large gradient.
            sq = (x * x).sum(dim=(1, 2)).clamp_min(torch.finfo(x.dtype).tiny)
            xh = x / sq.sqrt()[:, None, None]
            lx = torch.bmm(inv, xh)
            norm = torch.linalg.matrix_norm(torch.bmm(xh, lx.mT))
            inv.sub_(torch.bmm(lx, lx.mT) / (1 / sq + norm)[:, None, None])
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
        L̃ ← L̃/β2;   L̃ ← L̃ − L̃ X Xᵀ L̃ / (1 + ‖X Xᵀ L̃‖_F)     (X = √(1−β2)·G_(i), or G_(i) when β2 = 1)
    a Woodbury step whose small inverse (I + XᵀL̃X)⁻¹ is replaced by the scalar 1/(1 + ‖XXᵀL̃‖_F), no larger
    than its smallest eigenvalue (the Frobenius norm bounds the spectral radius), so L̃ dominates the exact
    inverse (εI + Σ G Gᵀ)⁻¹ in Loewner order and float32 suffices. This is the authors' implementation
    (github.com/jonathanmei/kradagrad, ``KrADPreconditioner.add_statistics``); sketchplan before issue 16
    divided by m·(1 + tr(XᵀL̃X)) instead, an m-times (and trace-vs-norm) weaker step under which L̃ barely
    left I/ε. Roots P_i = L̃_i^(1/(2k))
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
        cfg = MethodConfig(method="kradagrad", block_size=block_size, graft=graft, momentum=momentum,
                           packed=options.pop("packed", False))
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, kradagrad_variant=variant, **options))


KrADagrad.__doc__ += MATRIX_OPTIONS_DOC
register("kradagrad", KrADagradRule())
