"""Shampoo (Gupta, Koren & Singer 2018; Anil et al. 2020, "Scalable second order optimization").

Per block with dims d_1..d_k (after merging/blocking: docs/algorithms.md, Shapes) and per axis i:
    S_i ← β2 S_i + (1−β2) G_(i) G_(i)ᵀ            (β2 = 1: a running sum)
    P_i = (S_i + ε I)^(−1/(2k))                    every ``precondition_frequency`` steps (eigh, fp64 retry)
    D = G ×_1 P_1 ×_2 … ×_k P_k                      (matrix: P_L G P_R)
then grafting, momentum, decoupled weight decay and the step.

State per block group (blocks of one shape are stacked so batched kernels can process them together):
``blocks{g}.stat{i}`` and ``blocks{g}.root{i}``, each (count, d_i, d_i) in the state dtype — full squares, no
triangular packing — plus the graft, the momentum buffer and the skip counter (``common.diagonal_tail``).
A scalar, or a tensor with a dimension above ``max_precond_dim``, falls back to its graft's direction.
Full Shampoo is blocked Shampoo with B = ∞. Implementations: ``optimizers.torch.shampoo``,
``optimizers.jax.shampoo``.
"""

from __future__ import annotations

import math
import sys

from ..kernels.calls import KernelCall, gemm, pointwise
from .blocking import MatrixPlan, cached_plan
from .common import diagonal_tail
from .layout import MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .packing import packed_numel
from .batching import budget_bytes, root_batches, within
from .step_calls import matrix_frame_calls, unfold_copies
from .transients import Live, batched_group, eigh_roots, matrix_step, mode_products, replayed, root_batch, unfolds

NAME = "shampoo"
#: Kronecker-factored: takes graft and momentum options (``planner.candidates``).
MATRIX = True
#: Quality: the share of the full-matrix score it keeps (``planner.quality``): all of it.
SCORE_FACTOR = 1.0


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries (besides graft and momentum): unblocked, with square or packed
    factors (``methods.packing``)."""
    return [{}, {"packed": True}]


def kept_rank(cfg: MethodConfig, block: int) -> int:
    """Directions kept per factor of a block axis of size ``block``: all of them."""
    return block


def plan_for(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> MatrixPlan:
    return cached_plan(tuple(shape), cfg.block_size, opts.merge_dims, opts.max_precond_dim, cfg.batch_dims,
                       cfg.splits, cfg.split_axis)


def factor_layout(mp: MatrixPlan, names: tuple[str, ...], dtype: str, packed: bool = False) -> list[StateTensor]:
    """Two d×d matrices per block and axis (Shampoo: statistic and root; KrADagrad: inverse and root; SOAP:
    statistic and basis); with ``packed``, the symmetric ones are packed triangles (count, d(d+1)/2)
    (``methods.packing``)."""
    out = []
    for g, (bshape, count) in enumerate(mp.groups):
        for i, d in enumerate(bshape):
            for what in names:
                sym = packed and what in ("stat", "root", "inv")
                out.append(StateTensor(f"blocks{g}.{what}{i}", (count, packed_numel(d)) if sym else (count, d, d),
                                       dtype))
    return out


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors Shampoo (or blocked Shampoo, when ``cfg.block_size`` is set) allocates."""
    mp = plan_for(shape, cfg, opts)
    return factor_layout(mp, ("stat", "root"), opts.state_dtype, cfg.packed) + diagonal_tail(shape, cfg, opts)


@replayed
def stats_transients(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
    """``ShampooRule.update_statistics``: S_i += G_(i) G_(i)ᵀ in place; only middle-axis unfoldings copy."""
    unfolds(live, count, bshape, bn, sb)


@replayed
def newton_roots(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
    """``roots.inverse_root_newton`` per axis (float32): the identity (one d × d, alive throughout), A = S + εI,
    M, X, and per iteration T, X·T, Tᵖ and Tᵖ·M while the previous X and M are alive; each result stays alive
    until the next axis's."""
    prev = 0
    for d in bshape:
        sq = count * d * d * sb
        eye = live.alloc(d * d * sb)
        live.spike(d * d * sb)              # ε·eye
        a = live.alloc(sq)
        z = live.alloc(count * sb)          # the scale z = (p+1) / (2‖A‖_F)
        m = live.alloc(sq)
        x = live.alloc(sq)
        live.alloc(3 * sq)                  # (p+1)I − M, /p → T; X·T; Tᵖ (products of T) and Tᵖ·M
        live.free(3 * sq)                   # (the error check, T with M − I and |·|, peaks no higher)
        live.free(x + m + z + a + eye)
        out = live.alloc(sq)
        live.free(prev)
        prev = out
    live.free(prev)


@replayed
def precondition_transients(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
    """``apply_roots``: one batched product per axis (P_i times the mode-i unfolding), then norm grafting."""
    mode_products(live, count, bshape, bn, sb, lambda lv, d, m: lv.alloc(count * d * m * sb))


def initial_identity(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> dict[str, float]:
    """State tensors that start as c·I instead of zero, by name: every root starts as the identity, so a root
    refresh that fails before any succeeded keeps an unpreconditioned (grafted) step, never a zero one."""
    mp = plan_for(shape, cfg, opts)
    return {f"blocks{g}.root{i}": 1.0 for g, (bshape, _) in enumerate(mp.groups) for i in range(len(bshape))}


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """High-water mark of one Shampoo step over this parameter beyond params, grads and state, in bytes
    (``transients.matrix_step``: graft, stacked blocks, statistics, the root refresh — eigh's vectors,
    the scaled copy and the product, plus the previous axis's root — the mode products and norm grafting,
    momentum and the update). ``scratch`` adds eigh's in-kernel LAPACK/cuSOLVER work buffer
    (``transients.eigh_scratch_bytes``: a documented upper bound, invisible to tensor-level trackers).
    The float64 retry of a failed eigh (``roots.safe_eigh``) holds a float64 copy and float64 vectors,
    16·d² bytes where the float32 path holds 12·d²: it runs only after eigh fails and is not in this figure.
    """
    refresh = newton_roots if opts.root_method == "newton" else eigh_roots
    return matrix_step(shape, plan_for(shape, cfg, opts), cfg, opts, param_dtype, scratch,
                       stats=stats_transients, refresh=refresh, precondition=precondition_transients)


def batches(plans: list[MatrixPlan | None], cfg: MethodConfig, opts: OptimizerDefaults,
            tensors: list[tuple[tuple[int, ...], str]]) -> list:
    """The inverse roots one batched eigh computes for several tensors (``methods.batching.root_batches``;
    ``tensors``: the group's (shape, parameter dtype), whose one-tensor steps bound ``auto``'s calls); none with
    Newton roots, whose iteration counts differ per matrix."""
    if opts.root_method != "eigh":
        return []
    if opts.batch_blocks == "all":
        return root_batches(plans)
    sb = dtype_bytes(opts.state_dtype)

    def replay(key: tuple, members: tuple) -> int:
        live = Live(scratch=False)
        root_batch(live, key[0], sum(m.count for m in members), len(members), sb)
        return live.peak

    budget = budget_bytes(tensors, lambda s, dt: workspace_bytes(s, cfg, opts, dt, False))
    return root_batches(plans, within(budget, replay, lambda key, count: count * key[0] ** 2 * sb))


def group_workspace_bytes(tensors: list[tuple[tuple[int, ...], str]], cfg: MethodConfig, opts: OptimizerDefaults,
                          scratch: bool = True) -> int | None:
    """High-water mark of a param group's step when its roots are refreshed in batched calls across tensors
    (``transients.batched_group``); None when the group steps tensor by tensor (``methods.batching``)."""
    sb = dtype_bytes(opts.state_dtype)
    return batched_group(sys.modules[__name__], tensors, cfg, opts, scratch, kernel="roots",
                         batch=lambda live, b, plans: root_batch(live, b.key[0], b.count, len(b.members), sb),
                         stats=stats_transients, precondition=precondition_transients)


def apply_roots_calls(mp: MatrixPlan) -> list[KernelCall]:
    """``apply_roots``: per block group and axis i, P_i (d_i × d_i) times the mode-i unfolding (d_i × rest)."""
    calls = []
    for bshape, count in mp.groups:
        bnumel = math.prod(bshape)
        for i, d in enumerate(bshape):
            if unfold_copies(i, len(bshape)):
                calls.append(pointwise(count * bnumel))
            calls.append(gemm(d, bnumel // d, d, count))
    return calls


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The kernel calls one Shampoo step makes (``ShampooRule`` through ``MatrixRule.step_param``).

    Per block group (count blocks of dims d_1..d_k) and axis i: the statistic update S_i += G_(i) G_(i)ᵀ,
    ``gemm(d_i, d_i, numel/d_i)`` every ``stats_every`` steps; the inverse root ``inv_root(d_i)`` and its copy into the state every
    ``precondition_frequency`` steps (variant: ``opts.root_method`` when the planner does not pick); the mode
    product P_i G_(i), ``gemm(d_i, numel/d_i, d_i)`` every step; plus the shared frame (graft, momentum, update).
    """
    mp = plan_for(shape, cfg, opts)
    calls = matrix_frame_calls(shape, mp, cfg, opts)
    pf, se = opts.precondition_frequency, opts.stats_every
    for bshape, count in mp.groups:
        bnumel = math.prod(bshape)
        for i, d in enumerate(bshape):
            if unfold_copies(i, len(bshape)):
                calls.append(pointwise(count * bnumel, every=se))
            calls.append(gemm(d, d, bnumel // d, count, every=se))
            calls.append(KernelCall("inv_root", (d,), count, pf))
            calls.append(pointwise(count * d * d, every=pf))
    return calls + apply_roots_calls(mp)
