"""KrADagrad (Mei, Moreno & Walters 2023): Kronecker-factored AdaGrad that tracks the INVERSE statistics.

KrADagrad* per block and axis, with L̃₀ = I/ε:
    L̃ ← L̃/β2;   L̃ ← L̃ − L̃ G Gᵀ L̃ / (1 + ‖G Gᵀ L̃‖_F)      (same for R̃ with Gᵀ)
a Woodbury step with the small inverse replaced by a scalar (as the authors' code does; docs/algorithms.md's KrADagrad
m·(1 + tr) denominator is m times weaker and left L̃ near I/ε); the result dominates the exact inverse in Loewner
order, so float32 suffices. Roots P = L̃^(1/(2k)) by eigh (eigenvalues clamped at 0) every
``precondition_frequency`` steps; direction P_L G P_R, always norm-grafted. The "MM" variant updates one mode
per step with the other held fixed.

State like Shampoo's: ``blocks{g}.inv{i}`` and ``blocks{g}.root{i}`` (count, d_i, d_i) per block group, plus
graft, momentum and the skip counter. Optional ``block_size`` blocks it like blocked Shampoo.
Implementations: ``optimizers.torch.kradagrad``, ``optimizers.jax.kradagrad``.
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, gemm, pointwise
from .common import diagonal_tail, stats_weights
from .layout import MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .shampoo import apply_roots_calls, factor_layout, plan_for, precondition_transients
from .shampoo import kept_rank as shampoo_kept_rank
from .step_calls import matrix_frame_calls, unfold_copies
from .transients import Live, eigh_power, matrix_step, replayed, unfold_copy

NAME = "kradagrad"
MATRIX = True
#: Quality: 0.97 of Shampoo's score (its statistic is a Loewner upper bound of the inverse, not the inverse).
SCORE_FACTOR = 0.97
kept_rank = shampoo_kept_rank


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries: unblocked and every block size, with square or packed factors
    (``methods.packing``)."""
    return [pk for pk in ({}, {"packed": True})] + [{"block_size": b, **pk} for b in block_sizes
                                                     for pk in ({}, {"packed": True})]


def initial_identity(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> dict[str, float]:
    """State tensors that start as c·I, by name: L̃₀ = I/ε, and its root (I/ε)^(1/(2k)) — the root a refresh
    of the initial statistic would give, so a failed first refresh keeps a consistent (never zero) step."""
    mp = plan_for(shape, cfg, opts)
    out = {}
    for g, (bshape, _) in enumerate(mp.groups):
        for i in range(len(bshape)):
            out[f"blocks{g}.inv{i}"] = 1.0 / opts.shampoo_eps
            out[f"blocks{g}.root{i}"] = (1.0 / opts.shampoo_eps) ** (1.0 / (2 * len(bshape)))
    return out


def mm_axis(step, stats_every: int, order: int):
    """The axis ``variant="mm"`` updates at ``step`` (1-based; an int or a traced array): one axis per statistics
    update, cycling. With ``stats_every`` = f the updates fall on steps 1, f+1, 2f+1, …, so counting steps
    instead would never reach an odd axis when f is even and the order is 2."""
    return (step - 1) // stats_every % order


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors KrADagrad allocates for one parameter."""
    mp = plan_for(shape, cfg, opts)
    return factor_layout(mp, ("inv", "root"), opts.state_dtype, cfg.packed) + diagonal_tail(shape, cfg, opts)


@replayed
def copied_roots(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
    """``KrADagradRule.refresh_roots``: each axis's ``symmetric_power`` is copied into its root at once
    (``root.copy_(symmetric_power(...))``), so it is freed before the next axis's eigh — unlike Shampoo's
    ``transients.eigh_roots``, whose result stays bound until the next axis (one d₀ × d₀ matrix more when the first
    axis is the smaller)."""
    for d in bshape:
        live.free(eigh_power(live, count, d, sb))


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """High-water mark of one KrADagrad step beyond params, grads and state (``transients.matrix_step``).

    First step: L̃₀ = I/ε from ``eye`` and its quotient (2·d² for the largest axis). Statistics, per axis:
    the unfolding X (a copy for a middle axis) and its scaled copy, X ⊙ X for ‖X‖², X̂ = X/‖X‖ and L̃X̂ (so
    three unfolding-sized arrays at once), X̂(L̃X̂)ᵀ for the norm, (L̃X̂)(L̃X̂)ᵀ and its quotient, then L̃ + L̃ᵀ
    and its half; KrADagrad* updates every axis with the previous axis's X and L̃X alive
    until rebound, KrADagrad one axis per step (the worst axis's high-water mark counts). Roots: eigh as Shampoo's (with its LAPACK
    scratch when ``scratch``; each root freed before the next axis's: ``copied_roots``); directions: Shampoo's
    mode products.
    """
    mp = plan_for(shape, cfg, opts)
    decay, weight = stats_weights(opts.betas[1], opts.stats_every)

    def init(live: Live) -> None:
        dmax = max((d for b, _ in mp.groups for d in b), default=0)
        live.spike(2 * dmax * dmax * dtype_bytes(opts.state_dtype))

    def axis_update(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int, i: int,
                    prev: tuple[int, ...]) -> tuple[int, ...]:
        """One axis's update (``optimizers.torch.kradagrad.update_statistics``, statement by statement) with the
        previous axis's X, ‖X‖², X̂, L̃X̂ and norm (``prev``) alive until rebound; returns this axis's, still
        alive."""
        d, order = bshape[i], len(bshape)
        x_prev, sq_prev, xh_prev, lx_prev, nm_prev = prev
        x = live.alloc(count * bn * sb) if unfold_copy(i, order) else 0
        live.free(x_prev)
        if weight != 1.0:               # X·√w
            xs = live.alloc(count * bn * sb)
            live.free(x)
            x = xs
        live.spike(count * bn * sb)     # X ⊙ X, summed
        total = live.alloc(count * sb)
        sq = live.alloc(count * sb)     # clamped
        live.free(total + sq_prev)
        live.spike(count * sb)          # √‖X‖²
        xh = live.alloc(count * bn * sb)
        live.free(xh_prev)
        lx = live.alloc(count * bn * sb)
        live.free(lx_prev)
        live.spike(count * d * d * sb)  # X̂ (L̃X̂)ᵀ, for its norm
        nm = live.alloc(count * sb)
        live.free(nm_prev)
        outer = live.alloc(count * d * d * sb)  # (L̃X̂)(L̃X̂)ᵀ
        live.spike(count * sb)          # 1/‖X‖² + norm
        quot = live.alloc(count * d * d * sb)
        live.free(outer + quot)
        sym = live.alloc(count * d * d * sb)    # L̃ + L̃ᵀ, then its half
        live.spike(count * d * d * sb)
        live.free(sym)
        return x, sq, xh, lx, nm

    def stats(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
        if opts.kradagrad_variant == "star":  # every axis, one after the other
            prev = (0, 0, 0, 0, 0)
            for i in range(len(bshape)):
                prev = axis_update(live, count, bshape, bn, sb, i, prev)
            live.free(sum(prev))
            return
        # one axis per step, (step − 1) mod order: the high-water mark is the worst axis's (a middle axis's
        # unfolding is a copy, so on an order-3 block it is not axis 0's)
        rises = []
        for i in range(len(bshape)):
            probe = Live(live.count_scratch)
            probe.free(sum(axis_update(probe, count, bshape, bn, sb, i, (0, 0, 0, 0, 0))))
            rises.append(probe.peak)
        live.spike(max(rises))

    return matrix_step(shape, mp, cfg, opts, param_dtype, scratch, init=init, stats=stats, refresh=copied_roots,
                       precondition=precondition_transients)


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The kernel calls one KrADagrad step makes (``KrADagradRule`` through ``MatrixRule.step_param``).

    Per block group and axis i (every ``stats_every`` steps for ``star``; ``order`` times less often for ``mm``,
    one axis per statistics step):
    L̃ X as ``gemm(d, n, d)``, (L̃X)(L̃X)ᵀ and X(L̃X)ᵀ (for its Frobenius norm) as ``gemm(d, d, n)``
    (n = numel/d), the normalisation of X and the elementwise
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
            calls.append(pointwise(count * d * d, 6 + (1 if decay != 1.0 else 0), every))
            calls.append(gemm(d, n, d, count, every))
            calls.append(gemm(d, d, n, count, every))
            calls.append(gemm(d, d, n, count, every))
            calls.append(KernelCall("inv_root", (d,), count, pf, variant="eigh"))
            calls.append(pointwise(count * d * d, every=pf))
    return calls + apply_roots_calls(mp)
