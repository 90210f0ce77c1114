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

from .common import diagonal_tail
from .layout import MethodConfig, OptimizerDefaults, StateTensor
from .shampoo import factor_layout, factor_workspace, plan_for


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors KrADagrad allocates for one parameter."""
    mp = plan_for(shape, cfg, opts)
    return factor_layout(mp, ("inv", "root"), opts.state_dtype) + diagonal_tail(shape, cfg, opts)


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    return factor_workspace(plan_for(shape, cfg, opts), shape, opts.state_dtype)
