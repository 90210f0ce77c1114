"""Sketchy (Feinberg, Chen, Sun, Anil & Hazan 2023): Shampoo with Frequent-Directions-sketched statistics.

Each Shampoo statistic S_i is replaced by an FD sketch (Liberty 2013; Ghashami et al. 2016) of rank
k_i = min(k, d_i): Ŝ_i = U_i diag(σ_i²) U_iᵀ + ρ_i I, where ρ_i is the escaped mass (ALGORITHMS.md §3). One FD
update with new columns X (d × N): Y = [√β2 U diag(σ), X]; thin SVD Y = u s vᵀ; c = s_{k+1}²;
σ² ← s_{1..k}² − c; U ← u[:, :k]; ρ ← β2 ρ + c. The inverse root needs no d×d matrix (ALGORITHMS.md §4):
    Ŝ^α g = U diag((σ² + ρ + ε)^α) Uᵀ g + (ρ + ε)^α (g − U Uᵀ g),   α = −1/(2·order).

State per block group and axis i: ``blocks{g}.U{i}`` (count, d_i, k_i), ``blocks{g}.sig2_{i}`` (count, k_i),
``blocks{g}.rho{i}`` (count,) in the state dtype — Σ_i (d_i·k_i + k_i + 1) floats per block — plus graft,
momentum and the skip counter. ``block_size`` is optional (None: one block, subject to ``max_precond_dim``).
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, pointwise
from ..kernels.frequent_directions import fd_update
from ..kernels.lowrank import lowrank_root_apply
from .base import SketchplanOptimizer, register
from .blocking import MatrixPlan, matrix_plan
from .common import diagonal_tail, stats_weights
from .layout import MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .matrix import MATRIX_OPTIONS_DOC, MatrixRule, mode_apply, unfold
from .step_calls import matrix_frame_calls, unfold_copies


def plan_for(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> MatrixPlan:
    return matrix_plan(shape, cfg.block_size, opts.merge_dims, opts.max_precond_dim)


def sketch_rank(rank: int, dim: int) -> int:
    """Rank actually kept on an axis of size ``dim``: k_i = min(k, d_i)."""
    return min(rank, dim)


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors Sketchy allocates for one parameter at rank ``cfg.rank``."""
    mp = plan_for(shape, cfg, opts)
    dt = opts.state_dtype
    out = []
    for g, (bshape, count) in enumerate(mp.groups):
        for i, d in enumerate(bshape):
            k = sketch_rank(cfg.rank, d)
            out.append(StateTensor(f"blocks{g}.U{i}", (count, d, k), dt))
            out.append(StateTensor(f"blocks{g}.sig2_{i}", (count, k), dt))
            out.append(StateTensor(f"blocks{g}.rho{i}", (count,), dt))
    return out + diagonal_tail(shape, cfg, opts)


def fd_workspace_elems(d: int, k: int, n_cols: int) -> int:
    """Elements of the largest FD-update temporary for one block axis.

    Y is d × (k+N). When k+N ≥ d the update takes eigh of the d × d Gram matrix Y Yᵀ (Gram + eigenvectors,
    2·d²); otherwise the thin SVD of Y holds Y and its left factor (2·d·(k+N)).
    """
    w = k + n_cols
    return 2 * d * d if w >= d else 2 * d * w


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    """Largest step temporary: a group's FD update over its largest axis, or two stacked copies of G."""
    mp = plan_for(shape, cfg, opts)
    sb = dtype_bytes(opts.state_dtype)
    peak = math.prod(shape) * sb
    for bshape, count in mp.groups:
        bnumel = math.prod(bshape)
        for d in bshape:
            k = sketch_rank(cfg.rank, d)
            peak = max(peak, count * fd_workspace_elems(d, k, bnumel // d) * sb)
        peak = max(peak, 2 * count * bnumel * sb)
    return peak


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The kernel calls one Sketchy step makes (``SketchyRule`` through ``MatrixRule.step_param``).

    Per block group (count blocks of dims d_1..d_k) and axis i, every ``stats_every`` steps: the scaling
    √(1−β2)·G_(i) (β2 < 1), ``fd_update(d_i, k_i, numel/d_i)`` (variant: ``opts.fd_variant`` unless the planner
    picks) and the copy of the new U back into the state; every step ``lowrank_apply(d_i, k_i, numel/d_i)`` for
    the direction; plus the shared frame (graft, momentum, update).
    """
    mp = plan_for(shape, cfg, opts)
    calls = matrix_frame_calls(shape, mp, cfg, opts)
    se = opts.stats_every
    scaled = stats_weights(opts.betas[1], se)[1] != 1.0
    for bshape, count in mp.groups:
        bnumel = math.prod(bshape)
        for i, d in enumerate(bshape):
            k = sketch_rank(cfg.rank, d)
            copies = (1 if unfold_copies(i, len(bshape)) else 0) + (1 if scaled else 0)
            if copies:
                calls.append(pointwise(count * bnumel, copies, se))
            calls.append(KernelCall("fd_update", (d, k, bnumel // d), count, se))
            calls.append(pointwise(count * d * k, every=se))
            calls.append(pointwise(count * k, 2, se))
            if unfold_copies(i, len(bshape)):
                calls.append(pointwise(count * bnumel))
            calls.append(KernelCall("lowrank_apply", (d, k, bnumel // d), count))
    return calls


class SketchyRule(MatrixRule):
    """Sketchy's hooks for ``MatrixRule``: an FD update per axis every step; the inverse root is applied from
    the sketch directly (no stored root, so ``precondition_frequency`` does not apply to Sketchy)."""

    layout = staticmethod(layout)

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

    def precondition(self, state, g, grad_blocks, opts):
        order = grad_blocks.dim() - 1
        d = grad_blocks
        for i in range(order):
            u, sig2, rho = (state[f"blocks{g}.{n}{i}"] for n in ("U", "sig2_", "rho"))
            d = mode_apply(d, i, lambda x, u=u, s=sig2, r=rho: lowrank_root_apply(
                u, s, r, x, -1.0 / (2 * order), opts.shampoo_eps))
        return d


class Sketchy(SketchplanOptimizer):
    """Sketchy (Feinberg, Chen, Sun, Anil & Hazan 2023, "Sketchy: memory-efficient adaptive regularization with
    Frequent Directions"): Shampoo whose statistics are Frequent-Directions sketches.

    Per block and axis i (ALGORITHMS.md §3–4), with α = −1/(2k) for a block of order k:
        (U_i, σ_i², ρ_i) ← FD-update with the columns of √(1−β2)·G_(i)   (β2 = 1: of G_(i));
        Ŝ_i = U_i diag(σ_i²) U_iᵀ + ρ_i I;
        D = G ×_1 (Ŝ_1 + εI)^α … ×_k (Ŝ_k + εI)^α, applied in O(d·k) per column without d×d matrices;
    then per-block norm grafting, momentum, weight decay and the step. With rank ≥ every dimension, β2 = 1 and
    ε → 0 this is Shampoo with ``precondition_frequency = 1``.

    Args:
        params: tensors or param-group dicts.
        rank: sketch rank k (k_i = min(k, d_i) per axis).
        block_size: optional block size B (None: one block per tensor, subject to ``max_precond_dim``).
        fd_variant: FD-update kernel (``auto``, ``svd``, ``gram_small``, ``gram_large``, ``qr_svd``).
    """

    def __init__(self, params, lr: float = 1e-3, rank: int = 128, block_size: int | None = None,
                 graft: str = "adam", momentum: str = "float32", fd_variant: str = "auto", **options):
        cfg = MethodConfig(method="sketchy", rank=rank, block_size=block_size, graft=graft, momentum=momentum)
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, fd_variant=fd_variant, **options))


Sketchy.__doc__ += MATRIX_OPTIONS_DOC
register("sketchy", SketchyRule())
