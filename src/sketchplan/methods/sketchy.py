"""Sketchy (Feinberg, Chen, Sun, Anil & Hazan 2023): Shampoo with Frequent-Directions-sketched statistics.

Each Shampoo statistic S_i is replaced by an FD sketch (Liberty 2013; Ghashami et al. 2016) of rank
k_i = min(k, d_i): Ŝ_i = U_i diag(σ_i²) U_iᵀ + ρ_i I, where ρ_i is the escaped mass (ALGORITHMS.md §3). One FD
update with new columns X (d × N): Y = [√β2 U diag(σ), X]; thin SVD Y = u s vᵀ; c = s_{k+1}²;
σ² ← s_{1..k}² − c; U ← u[:, :k]; ρ ← β2 ρ + c. The inverse root needs no d×d matrix (ALGORITHMS.md §4):
    Ŝ^α g = U diag((σ² + ρ + ε)^α) Uᵀ g + (ρ + ε)^α (g − U Uᵀ g),   α = −1/(2·order).

State per block group and axis i: ``blocks{g}.U{i}`` (count, d_i, k_i), ``blocks{g}.sig2_{i}`` (count, k_i),
``blocks{g}.rho{i}`` (count,) in the state dtype — Σ_i (d_i·k_i + k_i + 1) floats per block — plus graft,
momentum and the skip counter. ``block_size`` is optional (None: one block, subject to ``max_precond_dim``).
Implementations: ``optimizers.torch.sketchy``, ``optimizers.jax.sketchy``.
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, pointwise
from .blocking import MatrixPlan, cached_plan
from .common import diagonal_tail, stats_weights
from .layout import MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .step_calls import matrix_frame_calls, unfold_copies

NAME = "sketchy"
MATRIX = True
#: Quality: the sketch's kept mass is modelled by ``kept_rank``; no further discount.
SCORE_FACTOR = 1.0


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries: every rank unblocked, and inside every block size larger
    than the rank."""
    return [{"rank": k} for k in ranks] + [{"rank": k, "block_size": b} for k in ranks for b in block_sizes if b > k]


def kept_rank(cfg: MethodConfig, block: int) -> int:
    """Directions kept per factor of a block axis of size ``block``: the sketch rank, at most the axis."""
    return min(cfg.rank, block)


def plan_for(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> MatrixPlan:
    return cached_plan(tuple(shape), cfg.block_size, opts.merge_dims, opts.max_precond_dim, cfg.batch_dims,
                       cfg.splits, cfg.split_axis)


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
