"""SOAP (Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson & Kakade 2024, "SOAP: Improving and
Stabilizing Shampoo using Adam", arXiv:2409.11321): Adam run in the eigenbasis of Shampoo's factors.

Per block (dims d_1..d_k after merging/blocking, docs/algorithms.md, Shapes, as Shampoo's) with Kronecker factors L_i, their
eigenbases Q_i (orthogonal d_i×d_i, Q_i = I before the first refresh) and, at step t with gradient G (the
paper's Algorithm 3; for a matrix, G' = Q_Lᵀ G Q_R):

    M ← β1 M + (1−β1) G                                   (first moment in the original space)
    G' = G ×_1 Q_1ᵀ … ×_k Q_kᵀ,     M' = M ×_1 Q_1ᵀ … ×_k Q_kᵀ
    V ← β2 V + (1−β2) G'⊙G'                               (second moment in the rotated space)
    N' = (M'/(1−β1ᵗ)) / (√(V/(1−β2ᵗ)) + ε),   N = N' ×_1 Q_1 … ×_k Q_k
    W ← W − η (N + λW)                                    (decoupled weight decay)
    L_i ← β2 L_i + (1−β2) G_(i) G_(i)ᵀ                    (after the update: the projection never uses G itself)
    every f = ``precondition_frequency`` steps from ``start_preconditioning_step``:
        the first time:  Q_i ← eigenvectors of L_i (eigh), by decreasing eigenvalue;
        later:           one power-iteration step and QR: with the estimates λ̂ = diag(Q_iᵀ L_i Q_i) sorted
                         decreasingly (V permuted alike along axis i), Q_i ← QR(L_i Q_i)
as the authors' implementation does (``get_orthogonal_matrix_QR``). β2 = 1 makes L and V running sums without
bias correction (``common.ema_weights``); momentum ``none`` uses M = G (no bias correction).

Differences from the authors' code, on purpose: the first step is taken (in the identity basis, i.e. an Adam
step) instead of skipped; M is kept in the original space and projected every step (the paper's Algorithm 3)
instead of being kept rotated and re-projected at every refresh (the same values in exact arithmetic); no
grafting; a dimension above ``max_precond_dim`` (or a scalar) makes the whole tensor fall back to Adam (as Shampoo
falls back to its graft), where the authors leave that one axis unrotated.

State (exact, ``layout``): per block group g and axis i ``blocks{g}.stat{i}`` (L_i; packed triangles with
``packed``, ``methods.packing``) and ``blocks{g}.basis{i}`` (Q_i, always square: orthogonal, not symmetric),
each (count, d_i, d_i); ``blocks{g}.exp_avg_sq`` (count, *block_shape), V in the rotated space; ``momentum`` (M,
param-shaped, in the momentum dtype, or none); the skip counter. A fallback tensor keeps Adam's ``exp_avg_sq``
(param-shaped), the momentum and the counter. Implementations: ``optimizers.torch.soap``, ``optimizers.jax.soap``.
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, gemm, pointwise
from .blocking import MatrixPlan, cached_plan
from .common import momentum_layout
from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .packing import factor_dims, pack_transients, unpack_calls, unpack_transients
from .shampoo import factor_layout
from .step_calls import momentum_update_calls, sanitize_calls, unfold_copies
from .transients import FINITE_CHECK, SCALARS, Live, qr_transients, safe_eigh, unfolds

NAME = "soap"
#: Kronecker-factored (blocking, structure and the score's capture); it takes momentum options but no graft.
MATRIX = True
GRAFTED = False
#: Quality: the share of the full-matrix score it keeps: all of Shampoo's. The paper reports fewer steps than
#: Shampoo at equal frequency; without a measurement of our own (``benchmarks/quality.py``) it gets no more.
SCORE_FACTOR = 1.0


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries (besides momentum): unblocked and every block size, each with
    square or packed statistics."""
    return [{"block_size": b, **pk} for b in (None, *block_sizes) for pk in ({}, {"packed": True})]


def kept_rank(cfg: MethodConfig, block: int) -> int:
    """Directions kept per factor of a block axis of size ``block``: all of them."""
    return block


def plan_for(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> MatrixPlan:
    return cached_plan(tuple(shape), cfg.block_size, opts.merge_dims, opts.max_precond_dim, cfg.batch_dims,
                       cfg.splits, cfg.split_axis)


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors SOAP allocates for one parameter (module docstring)."""
    mp = plan_for(shape, cfg, opts)
    if mp.fallback is not None:
        head = [StateTensor("exp_avg_sq", tuple(shape), opts.state_dtype)]
    else:
        head = factor_layout(mp, ("stat", "basis"), opts.state_dtype, cfg.packed)
        head += [StateTensor(f"blocks{g}.exp_avg_sq", (count,) + tuple(bshape), opts.state_dtype)
                 for g, (bshape, count) in enumerate(mp.groups)]
    return head + momentum_layout(shape, cfg.momentum) + [SKIP_COUNTER]


def qr_scratch_bytes(d: int, sb: int) -> int:
    """Upper bound of the scratch of one QR (``?geqrf`` then ``?orgqr``) of a d×d matrix inside the kernel (not a
    tensor): LAPACK's optimal LWORK is d·NB reals with block size NB ≤ 64."""
    return 64 * d * sb


def _adam_direction(live: Live, n: int, sb: int) -> int:
    """``soap.adam_direction``: m/bc1, v/bc2 (sqrt and +ε in place), their quotient; returns the quotient."""
    a = live.alloc(n * sb)
    b = live.alloc(n * sb)
    out = live.alloc(n * sb)
    live.free(a + b)
    return out


def _rotate(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> int:
    """``soap.rotate``: one batched product per axis (a copy of middle-axis unfoldings); returns the result."""
    order = len(bshape)
    prev = 0
    for i, d in enumerate(bshape):
        copy = live.alloc(count * bn * sb) if unfold_copies(i, order) else 0
        out = live.alloc(count * bn * sb)
        live.free(copy)
        live.free(prev)
        prev = out
    return prev


def _refresh(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int, first: bool) -> None:
    """``SoapRule.refresh_basis`` for one group: eigh (its float64 retry) and the flipped copy, or
    L·Q, the eigenvalue estimates and their order, the permuted product, its QR and V's permuted copy."""
    for d in bshape:
        sq = count * d * d * sb
        if first:
            ev = safe_eigh(live, count, d, sb)
            live.spike(sq)                         # V.flip(-1)
            live.free(ev)
            continue
        lq = live.alloc(sq)                        # L Q
        live.spike(sq)                             # Q ⊙ LQ
        est = live.alloc(count * d * sb)           # diag(Qᵀ L Q)
        live.spike(count * d * sb)                 # argsort's sorted values
        idx = live.alloc(count * d * 8)            # the order (int64)
        live.free(est)
        power = live.alloc(sq)                     # LQ with permuted columns
        live.free(lq)
        q = qr_transients(live, count, d, d, sb)   # Q of the QR (R dropped)
        live.scratch(qr_scratch_bytes(d, sb))
        live.spike(FINITE_CHECK)                   # finiteness of Q
        live.free(q + power)
        live.spike(count * bn * sb)                # V gathered along axis i
        live.free(idx)


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """High-water mark of one SOAP step over this parameter beyond params, grads and state, in bytes: the replay
    of ``SoapRule.step_param`` (the worst step, the update then a statistics update and a basis refresh; the
    first refresh's eigh and a later one's QR are both replayed). ``scratch`` adds LAPACK's eigh and QR work
    buffers (not tensors)."""
    mp = plan_for(shape, cfg, opts)
    sb, pb = dtype_bytes(opts.state_dtype), dtype_bytes(param_dtype)
    n = math.prod(shape)
    live = Live(scratch)  # the packed factors' squares first (``optimizers.torch.packing.unpacked_state``)
    live.alloc(SCALARS)
    factors = factor_dims(mp.groups, cfg) if cfg.packed and mp.fallback is None else []
    unpack_transients(live, factors, sb)
    base = live.now
    if pb != sb:
        live.alloc(n * sb)                         # grad.to(state dtype), kept through the step
    mom = 0
    if cfg.momentum != "none" and dtype_bytes(cfg.momentum) != sb:
        mom += live.alloc(n * sb)                  # m.to(state dtype), lerped; kept as M
    if opts.nesterov and cfg.momentum != "none":
        nest = live.alloc(n * sb)                  # lerp(g, m, β1); a cast copy of m is dropped on return
        live.free(mom)
        mom = nest
    if mp.fallback is not None:
        _adam_direction(live, n, sb)
        if pb != sb:
            live.spike(n * pb)                     # update.to(p.dtype)
        return live.peak
    blocked = not (len(mp.groups) == 1 and mp.groups[0][1] == 1)
    if blocked:
        live.alloc(n * sb)                         # to_blocks(G), kept for the statistics
        m_blocks = live.alloc(n * sb)              # to_blocks(M)
    d_blocks = 0
    for bshape, count in mp.groups:
        bn = math.prod(bshape)
        live.free(_rotate(live, count, bshape, bn, sb))   # G', folded into V and dropped
        mr = _rotate(live, count, bshape, bn, sb)  # M'
        nn = _adam_direction(live, count * bn, sb)
        live.free(mr)
        d_blocks += _rotate(live, count, bshape, bn, sb)  # N, kept in the list of blocks
        live.free(nn)
    if blocked:
        live.free(m_blocks)
        direction = live.alloc(n * sb)             # from_blocks
    elif len(mp.merged) >= 2 and tuple(d for d in shape if d != 1) != mp.merged:
        direction = live.alloc(n * sb)             # direction.reshape(p.shape) of a transposed result copies
    else:
        direction = 0
    live.free(d_blocks)
    if pb != sb:
        live.spike(n * pb)                         # update.to(p.dtype)
    live.free(direction)
    live.free(mom)                                 # M goes before the statistics
    for bshape, count in mp.groups:
        unfolds(live, count, bshape, math.prod(bshape), sb)
    for first in (True, False):
        for bshape, count in mp.groups:
            _refresh(live, count, bshape, math.prod(bshape), sb, first)
    if factors:
        live.free(live.now - base)
        pack_transients(live, factors, ("stat",), sb)
    return live.peak


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The kernel calls one SOAP step makes (``SoapRule.step_param``).

    Every step: sanitising, momentum, and per block group (count blocks of dims d_1..d_k, n = numel/d_i) three
    rotations of the block — G', M' and N — each ``gemm(d_i, n, d_i)`` per axis (plus a copy on middle axes),
    the V update and Adam's quotient (7 passes), the block stacking and the update. Every ``stats_every`` steps
    L_i += G_(i) G_(i)ᵀ, ``gemm(d_i, d_i, n)``. Every ``precondition_frequency`` steps the refresh: one power
    iteration ``gemm(d_i, d_i, d_i)`` and a QR of a d_i×d_i matrix, timed as ``inv_root`` with the ``eigh``
    variant (an upper bound: QR costs 4/3·d³ flops against eigh's ≈ 9d³; the catalogue has no QR kernel), the
    estimates and the permutations (4 passes over d_i² and one over the block), plus unpacking with ``packed``.
    """
    mp = plan_for(shape, cfg, opts)
    numel = math.prod(shape)
    calls = sanitize_calls(numel, opts) + momentum_update_calls(numel, cfg.momentum, opts.nesterov, opts.weight_decay)
    if mp.fallback is not None:
        return calls + [pointwise(numel, 7)]
    pf, se = opts.precondition_frequency, opts.stats_every
    blocked = not (len(mp.groups) == 1 and mp.groups[0][1] == 1)
    if blocked:
        calls.append(pointwise(numel, 3))
        count_all = sum(c for _, c in mp.groups)
        calls.append(pointwise(max(1, numel // count_all), count_all))
    for bshape, count in mp.groups:
        bnumel = math.prod(bshape)
        calls.append(pointwise(count * bnumel, 7))
        for i, d in enumerate(bshape):
            for _ in range(3):
                if unfold_copies(i, len(bshape)):
                    calls.append(pointwise(count * bnumel))
                calls.append(gemm(d, bnumel // d, d, count))
            if unfold_copies(i, len(bshape)):
                calls.append(pointwise(count * bnumel, every=se))
            calls.append(gemm(d, d, bnumel // d, count, every=se))
            calls.append(gemm(d, d, d, count, every=pf))
            calls.append(KernelCall("inv_root", (d,), count, pf, variant="eigh"))
            calls.append(pointwise(count * d * d, 4, every=pf))
            calls.append(pointwise(count * bnumel, 2, every=pf))
    if cfg.packed:
        calls += unpack_calls(factor_dims(mp.groups, cfg), opts, cfg.method)
    return calls


__all__ = ["NAME", "MATRIX", "GRAFTED", "SCORE_FACTOR", "grid", "kept_rank", "layout", "workspace_bytes",
           "kernel_calls"]
