"""Sketchy (Feinberg, Chen, Sun, Anil & Hazan 2023): Shampoo with Frequent-Directions-sketched statistics.

Each Shampoo statistic S_i is replaced by an FD sketch (Liberty 2013; Ghashami et al. 2016) of rank
k_i = min(k, d_i): Ŝ_i = U_i diag(σ_i²) U_iᵀ + ρ_i I, where ρ_i is the escaped mass (docs/algorithms.md, Frequent Directions). One FD
update with new columns X (d × N): Y = [√β2 U diag(σ), X]; thin SVD Y = u s vᵀ; c = s_{k+1}²;
σ² ← s_{1..k}² − c; U ← u[:, :k]; ρ ← β2 ρ + c. The inverse root needs no d×d matrix (docs/algorithms.md, Sketchy):
    Ŝ^α g = U diag((σ² + ρ + ε)^α) Uᵀ g + (ρ + ε)^α (g − U Uᵀ g),   α = −1/(2·order).

State per block group and axis i: ``blocks{g}.U{i}`` (count, d_i, k_i), ``blocks{g}.sig2_{i}`` (count, k_i),
``blocks{g}.rho{i}`` (count,) in the state dtype — Σ_i (d_i·k_i + k_i + 1) floats per block — plus graft,
momentum and the skip counter. ``block_size`` is optional (None: one block, subject to ``max_precond_dim``).
Implementations: ``optimizers.torch.sketchy``, ``optimizers.jax.sketchy``.
"""

from __future__ import annotations

import math
import sys

from ..kernels.calls import SUBSPACE_ESTIMATE_STEPS, SUBSPACE_POWER_STEPS, THIN_COLUMNS, KernelCall, choose_variant, \
    pointwise, subspace_gs_passes, subspace_width
from .batching import budget_bytes, fd_batches, within
from .blocking import MatrixPlan, cached_plan
from .common import diagonal_tail, stats_weights
from .layout import MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .step_calls import matrix_frame_calls, unfold_copies
from .transients import (FINITE_CHECK, Live, batched_group, matrix_step, mode_products, qr_pair_transients,
                         qr_transients, replayed, safe_eigh, svd_scratch_bytes, unfold_copy)

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


def gram_left_transients(live: Live, c: int, d: int, r: int, sb: int) -> int:
    """``frequent_directions._gram_left`` of (c, d, r) columns: the r × r Gram, its eigh (float64 retry, its
    pairs alive to the end), the flipped and clamped values and flipped vectors, √, the mask (booleans), 1/s
    masked, V scaled by it, Y (·), then the masked values. Returns the bytes of the values and the left factor,
    which it leaves alive."""
    g = live.alloc(c * r * r * sb)           # Yᵀ Y
    ev = safe_eigh(live, c, r, sb)
    live.free(g)
    live.spike(c * r * sb)                   # flipped values (clamped below)
    fl = live.alloc(c * r * sb * 2 + c * r * r * sb)   # clamped values, flipped vectors, √
    tmp = live.alloc(c * sb)                 # s₁ · tolerance
    keep = live.alloc(c * r)                 # the mask
    live.free(tmp)
    inv = live.alloc(c * r * sb)             # 1 / s
    safe = live.alloc(c * r * sb)            # where(keep, 1/s, 0)
    live.free(inv)
    vs = live.alloc(c * r * r * sb)          # V · that
    live.free(safe)
    left = live.alloc(c * d * r * sb)        # Y (·)
    live.free(vs)
    zeros = live.alloc(c * r * sb)
    values = live.alloc(c * r * sb)          # where(keep, w, 0)
    live.free(zeros)
    live.free(fl + keep + ev)
    return values + left


def _gs_pass_transients(live: Live, c: int, d: int, k: int, m: int, sb: int, p: int) -> int:
    """One Gram–Schmidt pass of (c, d, m) columns against U (``frequent_directions._project_out``): Uᵀ P, U(·)
    and P − ·, then the previous P's ``p`` bytes freed (0: its caller holds it). Returns the new P's bytes."""
    t1 = live.alloc(c * k * m * sb)
    t2 = live.alloc(c * d * m * sb)
    live.free(t1)
    new = live.alloc(c * d * m * sb)
    live.free(t2 + p)
    return new


def _orthogonal_to_transients(live: Live, c: int, d: int, k: int, m: int, sb: int, own: bool,
                              passes: int = 2) -> int:
    """``frequent_directions._orthogonal_to`` of (c, d, m) columns: per Gram–Schmidt pass (``passes``) Uᵀ P,
    U(·) and P − · (the previous P freed, the argument only when ``own``: else its caller holds it), then QR
    (Q kept, R spiked) and the last P freed. Returns Q's bytes."""
    p = c * d * m * sb if own else 0
    for _ in range(passes):
        p = _gs_pass_transients(live, c, d, k, m, sb, p)
    q = qr_transients(live, c, d, m, sb)
    live.free(p)
    return q


def _outside_transients(live: Live, c: int, d: int, k: int, m: int, sb: int) -> int:
    """``frequent_directions._outside`` of (c, d, m) columns: two Gram–Schmidt passes (Uᵀ R, U(·), R − ·; the
    argument held by the caller), QR with R kept, the residual freed, the tolerance (‖x_j‖, scaled), |diag R| and
    the mask, R and the tolerance freed, a third pass on Q, then the norms, their reciprocals masked and Q scaled.
    Returns P's bytes."""
    r = 0
    for _ in range(2):
        r = _gs_pass_transients(live, c, d, k, m, sb, r)
    qr = qr_pair_transients(live, c, d, m, sb)
    q, rr = c * d * m * sb, qr - c * d * m * sb
    live.free(r)
    nrm = live.alloc(c * m * sb)                         # ‖x_j‖
    tol = live.alloc(c * m * sb)                         # · max(d, m) eps
    live.free(nrm)
    ab = live.alloc(c * m * sb)                          # |diag R|
    keep = live.alloc(c * m)
    live.free(ab + rr + tol)
    q2 = _gs_pass_transients(live, c, d, k, m, sb, q)    # the third pass, on Q
    nrm = live.alloc(c * m * sb)                         # ‖q_j‖, 1/·, masked
    inv = live.alloc(c * m * sb)
    live.free(nrm)
    scale = live.alloc(c * m * sb)
    live.free(inv)
    p = live.alloc(c * d * m * sb)
    live.free(scale + q2 + keep)
    return p


def _omega(live: Live, rows: int, cols: int, sb: int) -> int:
    """A Gaussian draw (rows × cols) made in float32 and cast to the state dtype (the draw then freed)."""
    om = live.alloc(rows * cols * 4)
    if sb != 4:
        live.alloc(rows * cols * sb)
        live.free(om)
        om = rows * cols * sb
    return om


def _scaled_sketch_transients(live: Live, c: int, d: int, k: int, sb: int) -> int:
    """``frequent_directions._scaled_sketch``: β2 σ², clamped, √ (each freed as the next is made), then
    A = U · that. Returns A's bytes."""
    live.spike(2 * c * k * sb)                           # β2 σ² and its clamped copy
    root = live.alloc(c * k * sb)                        # √
    a = live.alloc(c * d * k * sb)
    live.free(root)
    return a


def _sketch_columns_transients(live: Live, c: int, d: int, k: int, w: int, sb: int) -> int:
    """``frequent_directions._sketch_columns``: A = √β2 · U diag(σ), then Y = [A, X]. Returns Y's bytes."""
    a = _scaled_sketch_transients(live, c, d, k, sb)
    y = live.alloc(c * d * w * sb)
    live.free(a)
    return y


def _ritz_transients(live: Live, c: int, ll: int, w: int, sb: int) -> tuple[int, int, int]:
    """``frequent_directions._ritz``: B = QᵀY, B Bᵀ and its eigh (freed on return), the flipped values clamped
    and the flipped vectors. Returns the bytes of B, s² and ub."""
    b = live.alloc(c * ll * w * sb)
    bb = live.alloc(c * ll * ll * sb)
    return (b, *_gram_eigh_transients(live, c, ll, sb, bb))


def _gram_eigh_transients(live: Live, c: int, ll: int, sb: int, bb: int) -> tuple[int, int]:
    """The Ritz steps' common tail: eigh of the l × l Gram B Bᵀ (``bb`` bytes, freed once the eigenpairs exist),
    the flipped values clamped and the flipped vectors. Returns the bytes of s² and ub, which it leaves alive."""
    ev = safe_eigh(live, c, ll, sb)
    live.free(bb)
    live.spike(c * ll * sb)                              # flipped values (clamped below)
    s2 = live.alloc(c * ll * sb)
    ub = live.alloc(c * ll * ll * sb)
    live.free(ev)
    return s2, ub


def _warm_ritz_transients(live: Live, c: int, k: int, m: int, ll: int, sb: int) -> tuple[int, int, int]:
    """``frequent_directions._warm_ritz`` with Q = [U, P] (P: ll − k columns): UᵀX and PᵀX, their stack QᵀX,
    B Bᵀ, + β2 σ² (clamped) on its diagonal, its eigh (freed on return: B Bᵀ first), the flipped values clamped
    and the flipped vectors. Returns the bytes of QᵀX, s² and ub, which it leaves alive."""
    t1 = live.alloc(c * k * m * sb)                      # Uᵀ X
    t2 = live.alloc(c * (ll - k) * m * sb)               # Pᵀ X
    bx = live.alloc(c * ll * m * sb)
    live.free(t1 + t2)
    bb = live.alloc(c * ll * ll * sb)
    live.spike(2 * c * k * sb)                           # β2 σ², clamped
    return (bx, *_gram_eigh_transients(live, c, ll, sb, bb))


def subspace_exact_transients(live: Live, c: int, d: int, k: int, m: int, sb: int) -> int:
    """``frequent_directions._subspace_exact`` (l = k + m): P (``_outside``), the Ritz step from QᵀX, the mask,
    U ub_k + P ub'_k masked, σ² − c and β2 ρ + c. Returns the new sketch's bytes (U, σ², ρ)."""
    p = _outside_transients(live, c, d, k, m, sb)
    bx, s2, ub = _warm_ritz_transients(live, c, k, m, k + m, sb)
    tmp = live.alloc(c * sb)                             # s²₁ · tolerance
    keep = live.alloc(c * k)
    live.free(tmp)
    uu = live.alloc(c * d * k * sb)                      # U ub_k
    live.spike(c * d * k * sb)                           # + P ub'_k
    new_u = live.alloc(c * d * k * sb)                   # · mask
    live.free(uu)
    diff = live.alloc(c * k * sb)                        # s² − c
    new_sig2 = live.alloc(c * k * sb)
    live.free(diff)
    br = live.alloc(c * sb)                              # β2 ρ
    new_rho = live.alloc(c * sb)
    live.free(br + keep + bx + s2 + ub + p)
    return new_u + new_sig2 + new_rho


def subspace_transients(live: Live, c: int, d: int, k: int, m: int, sb: int) -> int:
    """``frequent_directions._subspace_update`` on (c, d, ·) blocks with m new columns (l = ``subspace_width``;
    ``subspace_exact_transients`` when l = k + m): the larger of a cold step (the first: the sketch has fewer than
    k directions) and a warm one (every later step when k < l < d), each replayed by ``subspace_step_transients``.
    Returns the new sketch's bytes (U, σ², ρ)."""
    if subspace_width(d, k, m) == k + m:
        return subspace_exact_transients(live, c, d, k, m, sb)
    rise, kept = 0, 0
    for warm in (False, True):
        step = Live(live.count_scratch)
        kept = subspace_step_transients(step, c, d, k, m, sb, warm)   # the same new sketch either way
        rise = max(rise, step.peak)
    live.spike(rise)
    live.alloc(kept)
    return kept


def subspace_step_transients(live: Live, c: int, d: int, k: int, m: int, sb: int, warm: bool) -> int:
    """One step of ``frequent_directions._subspace_update`` (k < l = ``subspace_width`` < min(d, k + m)), cold or
    warm. β2 σ² (clamped) stays alive to the end; Y = [A, X] is never formed. Warm: X Ω, P orthogonal to U, each
    residual power step's Xᵀ P, X(·) and P (Ω drawn in float32), then ``_warm_ritz`` (P freed after it); U
    (β2 σ² · M[:k]) starts Z. Cold: A = √β2 · U diag(σ) (alive to the end), A Ω_A + X Ω_X, QR, each power step's
    A(AᵀQ) + X(XᵀQ) and QR; QᵀA and QᵀX (Q freed), B Bᵀ, its eigh and the flipped pairs; A (QᵀA)ᵀ M starts Z.
    Then M = ub_k · coef, (QᵀX)ᵀ M and Z += X (·) (accumulated by the product when k > ``THIN_COLUMNS``), the
    estimate (``_estimate_transients``), ``_gram_left`` of Z; the spectrum s² (l), the mask (k booleans), the
    coefficients (k) and the estimate's eigenvalues stay alive to the end. Returns the new sketch's bytes
    (U, σ², ρ)."""
    ll = subspace_width(d, k, m)
    warm = warm and k < ll
    live.spike(c * k * sb)                               # β2 σ² (clamped below)
    d2 = live.alloc(c * k * sb)
    if warm:
        om = _omega(live, m, ll - k, sb)
        xo = live.alloc(c * d * (ll - k) * sb)           # X Ω
        live.free(om)
        first, *later = subspace_gs_passes()
        p = _orthogonal_to_transients(live, c, d, k, ll - k, sb, own=False, passes=first)
        live.free(xo)
        for passes in later:
            t1 = live.alloc(c * m * (ll - k) * sb)       # Xᵀ P
            t2 = live.alloc(c * d * (ll - k) * sb)       # X (·)
            live.free(t1)
            p2 = _orthogonal_to_transients(live, c, d, k, ll - k, sb, own=False, passes=passes)
            live.free(t2 + p)
            p = p2
        bx, s2, ub = _warm_ritz_transients(live, c, k, m, ll, sb)
        live.free(p)
        a = ba = 0
    else:
        a = _scaled_sketch_transients(live, c, d, k, sb)     # A
        om = _omega(live, k + m, ll, sb)
        yo = live.alloc(c * d * ll * sb)                 # A Ω_A
        live.spike(c * d * ll * sb)                      # X Ω_X, added into it
        live.free(om)
        q = qr_transients(live, c, d, ll, sb)
        live.free(yo)
        for _ in range(SUBSPACE_POWER_STEPS):            # Y Yᵀ Q = A (Aᵀ Q) + X (Xᵀ Q)
            t1 = live.alloc(c * k * ll * sb)
            out = live.alloc(c * d * ll * sb)
            live.free(t1)
            t2 = live.alloc(c * m * ll * sb)
            t3 = live.alloc(c * d * ll * sb)
            live.free(t2 + t3)
            q2 = qr_transients(live, c, d, ll, sb)
            live.free(out + q)
            q = q2
        ba = live.alloc(c * ll * k * sb)                 # Qᵀ A
        bx = live.alloc(c * ll * m * sb)                 # Qᵀ X
        live.free(q)
        bb = live.alloc(c * ll * ll * sb)                # (QᵀX)(QᵀX)ᵀ
        live.spike(c * ll * ll * sb)                     # + (QᵀA)(QᵀA)ᵀ, in place
        ev = safe_eigh(live, c, ll, sb)
        live.free(bb)
        live.spike(c * ll * sb)                          # flipped values (clamped below)
        s2 = live.alloc(c * ll * sb)
        ub = live.alloc(c * ll * ll * sb)
        live.free(ev)
    live.spike(c * sb + c * k + 3 * c * k * sb)          # s²₁·tol, the mask, then (s² − c)₊ and its √ ...
    small = s2 + live.alloc(c * k + c * k * sb)          # the mask and the coefficients
    mm = live.alloc(c * ll * k * sb)                     # M = ub_k · coef
    if not warm:
        live.free(ub)                                    # (warm: ``_warm_ritz``'s pairs are freed with it, below)
    t1 = live.alloc(c * k * k * sb)                      # warm: β2 σ² · M[:k]; cold: (QᵀA)ᵀ M
    z = live.alloc(c * d * k * sb)                       # Z = U (·) or A (·)
    live.free(t1 + ba)
    xm = live.alloc(c * m * k * sb)                      # (QᵀX)ᵀ M
    live.free(bx + mm + (ub if warm else 0))
    if k <= THIN_COLUMNS:
        live.spike(c * d * k * sb)                       # X (·), added into Z
    live.free(xm)
    small += _estimate_transients(live, c, d, k, m, sb, warm)
    live.free(a)
    left = gram_left_transients(live, c, d, k, sb)
    live.free(z)
    mx = live.alloc(c * sb)                              # max(λ̂, c)
    br = live.alloc(c * sb)                              # β2 ρ
    new = live.alloc(c * sb)
    live.free(mx + br + small + d2)
    return left + new


def _estimate_transients(live: Live, c: int, d: int, k: int, m: int, sb: int, warm: bool) -> int:
    """``frequent_directions._largest_eigenvalue`` on the rows of Y Yᵀ − Z Zᵀ: the start row (a float32 draw,
    cast), normalised; per Krylov step the Gram–Schmidt passes, the row's image and the grown basis and images;
    T = images · basisᵀ, its finiteness, its symmetric part and eigenvalues. Leaves the eigenvalues alive (the
    estimate is a view of them) and returns their bytes."""
    steps = SUBSPACE_ESTIMATE_STEPS
    v = _omega(live, 1, d, sb)                           # the start row (broadcast over blocks)
    nrm = live.alloc(c * sb)
    cl = live.alloc(c * sb)
    live.free(nrm)
    basis = live.alloc(c * d * sb)
    live.free(cl)
    images = _rows_transients(live, c, d, k, m, sb, warm)
    r = 0
    for j in range(1, steps):
        for _ in range(2):
            t1 = live.alloc(c * j * sb)                  # r Qᵀ
            t2 = live.alloc(c * d * sb)                  # (·) Q
            live.free(t1)
            r2 = live.alloc(c * d * sb)                  # r − (·)
            live.free(t2 + r)
            n1 = live.alloc(c * sb)                      # ‖r‖, clamped
            n2 = live.alloc(c * sb)
            live.free(n1)
            r = live.alloc(c * d * sb)                   # r / ‖r‖
            live.free(n2 + r2)
        grown = live.alloc(c * (j + 1) * d * sb)
        live.free(basis)
        basis = grown
        img = _rows_transients(live, c, d, k, m, sb, warm)
        grown = live.alloc(c * (j + 1) * d * sb)
        live.free(images + img)
        images = grown
    t = live.alloc(c * steps * steps * sb)               # images · basisᵀ
    live.spike(sb + 1)                                   # its sum, finite?
    if sb != 8:                                          # T in float64
        t64 = live.alloc(c * steps * steps * 8)
        live.free(t)
        t = t64
    sym = live.alloc(c * steps * steps * 8)              # T + Tᵀ
    half = live.alloc(c * steps * steps * 8)             # / 2
    live.free(sym)
    values = live.alloc(c * steps * 8)
    live.spike(c * steps * steps * 8 + c * 4)            # eigh's copy of its input and its info
    live.free(half)
    if sb != 8:                                          # the largest, cast back
        out = live.alloc(c * sb)
        live.free(values)
        values = out
    live.free(t + images + basis + r + v)
    return values


def _rows_transients(live: Live, c: int, d: int, k: int, m: int, sb: int, warm: bool) -> int:
    """One row product v (Y Yᵀ − Z Zᵀ) = v A Aᵀ + (v X) Xᵀ − (v Z) Zᵀ (warm: v A Aᵀ = ((v U) · β2 σ²) Uᵀ).
    Returns the result's bytes, which it leaves alive."""
    t = live.alloc(c * k * sb)                           # v U or v A
    if warm:
        t2 = live.alloc(c * k * sb)                      # · β2 σ²
        live.free(t)
        t = t2
    r1 = live.alloc(c * d * sb)
    live.free(t)
    t = live.alloc(c * m * sb)                           # v X
    r2 = live.alloc(c * d * sb)
    live.free(t)
    r3 = live.alloc(c * d * sb)
    live.free(r1 + r2)
    t = live.alloc(c * k * sb)                           # v Z
    r4 = live.alloc(c * d * sb)
    live.free(t)
    r5 = live.alloc(c * d * sb)
    live.free(r3 + r4)
    return r5


@replayed
def fd_transients(live: Live, count: int, d: int, k: int, m: int, sb: int, variant: str) -> int:
    """``kernels.torch.frequent_directions.fd_update`` on (count, d, ·) blocks with m new columns: replays the
    variant's tensors (and its LAPACK/cuSOLVER scratch when the replay counts it) and returns the bytes of the
    new sketch it leaves alive (U, σ², ρ), which the caller keeps until the next axis's update."""
    if variant == "auto":
        variant = choose_variant(d, k, m)
    full = variant == "subspace" and subspace_width(d, k, m) == d < k + m   # Q = I: ``gram_large``, masked
    if variant == "subspace" and not full:
        return subspace_transients(live, count, d, k, m, sb)
    w = k + m
    c = count
    if full or variant == "gram_large":
        a1 = live.alloc(c * d * d * sb)          # (U σ²) Uᵀ   (U σ² freed)
        a2 = live.alloc(c * d * d * sb)          # X Xᵀ
        gram = live.alloc(c * d * d * sb)
        live.free(a1 + a2)
        ev = safe_eigh(live, c, d, sb)
        flipped = live.alloc(c * d * sb)         # the values flipped, then clamped
        left = live.alloc(c * d * sb)
        live.free(flipped)
        left += live.alloc(c * d * d * sb)       # the vectors flipped
        live.free(ev + gram)
        r = d
    else:
        y = live.alloc(c * d * w * sb)           # Y = [√β2 U diag(σ), X]
        r = min(d, w)
        if variant == "gram_small":
            left = gram_left_transients(live, c, d, w, sb)
            live.free(y)
            r = w
        else:
            q = 0
            cols = w                             # the SVD's input: Y (d × w), or Rᵀ (d × r) after Yᵀ = Q R
            if variant == "qr_svd":
                q = live.alloc(c * w * r * sb + c * r * d * sb)   # Q and R of Yᵀ
                cols = r
            if sb < 8:                           # U, s, Vᵀ of the attempt that failed (float64: the only one)
                live.spike(c * d * r * sb + c * r * sb + c * r * cols * sb)
            y64 = live.alloc(c * d * w * 8) if sb < 8 else 0         # the float64 retry (Q, R still bound)
            if q and sb < 8:                     # the float64 Q and R replace the first attempt's, and the copy
                q64 = live.alloc((c * w * r + c * r * d) * 8)        # of Y is dropped for Rᵀ (a view of R)
                live.free(q + y64)
                q = y64 = 0
            else:
                q64 = 0
            out = live.alloc((c * d * r + c * r + c * r * cols) * max(sb, 8))
            if variant == "qr_svd":              # ``_`` rebound to Vᵀ: the float64 Q is dropped
                live.free(c * w * r * 8)
                if q64:
                    q64 -= c * w * r * 8
                else:
                    q -= c * w * r * 8
            live.scratch(svd_scratch_bytes(d, cols, max(sb, 8)))
            live.spike(FINITE_CHECK)             # finiteness of the sums
            if sb < 8:
                left = live.alloc(c * r * sb + c * d * r * sb)   # s², cast back; U cast back
                live.free(out + y64 + q64 + q + y)
            else:                                # float64: the casts are no-ops, U is the SVD's own
                left = live.alloc(c * r * sb) + c * d * r * sb   # s²; U
                live.free(out - c * d * r * sb + q64 + q + y)
    c0 = live.alloc(c * sb) if r <= k else 0   # c = 0 when there is no (k+1)-th value
    diff = live.alloc(c * k * sb)                # σ² − c, then clamped
    sig = live.alloc(c * k * sb)
    live.free(diff)
    u_bytes = c * d * k * sb
    kept = live.alloc(u_bytes) if r > k else 0   # U[:, :k]: a copy, unless U has k columns (then U)
    keep = 0
    if full:                                     # the mask, U · mask and where(mask, σ², 0), then rebound
        tmp = live.alloc(c * sb)
        keep = live.alloc(c * k)
        live.free(tmp)
        masked = live.alloc(u_bytes)
        sig2 = live.alloc(c * k * sb)
        live.free(kept + sig)
        kept, sig = masked, sig2
    live.spike(c * sb)                           # β2 ρ, then + c
    rho = live.alloc(c * sb)
    live.free(left + c0 + keep - (0 if full else u_bytes - kept))
    return sig + rho + u_bytes


def stats_transients(cfg: MethodConfig, opts: OptimizerDefaults):
    """``SketchyRule.update_statistics``: per axis the unfolding (a copy on middle axes), its scaled copy when
    β2 < 1, the FD update; the previous axis's new sketch is alive until rebound."""
    scaled = stats_weights(opts.betas[1], opts.stats_every)[1] != 1.0

    def stats(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
        _stats_replay(live, count, bshape, bn, sb, cfg.rank, scaled, opts.fd_variant)

    return stats


@replayed
def _stats_replay(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int, rank: int, scaled: bool,
                  fd_variant: str) -> int:
    """``stats_transients``' replay of one block group (memoised by ``transients.replayed``)."""
    order = len(bshape)
    x_prev = new_prev = 0
    for i, d in enumerate(bshape):
        x = live.alloc(count * bn * sb) if unfold_copy(i, order) else 0
        live.free(x_prev)
        if scaled:
            xs = live.alloc(count * bn * sb)
            live.free(x)
            x = xs
        new = fd_transients(live, count, d, sketch_rank(rank, d), bn // d, sb, fd_variant)
        live.free(new_prev)
        x_prev, new_prev = x, new
    live.free(x_prev + new_prev)
    return 0


def precondition_transients(cfg: MethodConfig):
    """``SketchyRule.precondition``: per axis ``lowrank_root_apply`` (ridge, scales; Uᵀ X, its scaling, U times
    that, then (ρ+ε)^α X added in one pass), then norm grafting."""

    def product(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
        _precondition_replay(live, count, bshape, bn, sb, cfg.rank)

    return product


@replayed
def _precondition_replay(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int, rank: int) -> int:
    """``precondition_transients``' replay of one block group (memoised by ``transients.replayed``)."""
    def one(lv: Live, d: int, m: int) -> None:
        k = sketch_rank(rank, d)
        small = lv.alloc(count * sb * (2 + 2 * k))
        if k == d:
            t2 = lv.alloc(count * k * m * sb)
            t3 = lv.alloc(count * k * m * sb)
            lv.free(t2)
            lv.alloc(count * d * m * sb)
            lv.free(t3)
        else:
            t2 = lv.alloc(count * k * m * sb)        # Uᵀ X (or Xᵀ U on a transposed view)
            t3 = lv.alloc(count * k * m * sb)        # scaled
            lv.free(t2)
            t4 = lv.alloc(count * d * m * sb)        # U (·)
            lv.free(t3)
            lv.alloc(count * d * m * sb)             # + (ρ+ε)^α X in one addcmul
            lv.free(t4)
        lv.free(small)

    mode_products(live, count, bshape, bn, sb, one)
    return 0


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """High-water mark of one Sketchy step over this parameter beyond params, grads and state, in bytes
    (``transients.matrix_step`` with Sketchy's FD updates and low-rank root applications). ``scratch`` adds
    the FD kernel's eigh/SVD work buffer (``transients.eigh_scratch_bytes``/``svd_scratch_bytes``: documented
    upper bounds, invisible to tensor-level trackers)."""
    return matrix_step(shape, plan_for(shape, cfg, opts), cfg, opts, param_dtype, scratch,
                       stats=stats_transients(cfg, opts), refresh=None, precondition=precondition_transients(cfg))


def batches(plans: list[MatrixPlan | None], cfg: MethodConfig, opts: OptimizerDefaults,
            tensors: list[tuple[tuple[int, ...], str]]) -> list:
    """The FD updates one batched call makes for several tensors (``methods.batching.fd_batches``; ``tensors``:
    the group's (shape, parameter dtype), whose one-tensor steps bound ``auto``'s calls)."""
    if opts.batch_blocks == "all":
        return fd_batches(plans, cfg.rank)
    sb = dtype_bytes(opts.state_dtype)

    def replay(key: tuple, members: tuple) -> int:
        live = Live(scratch=False)
        fd_batch(live, key, members, plans, tensors, sb, opts.fd_variant)
        return live.peak

    budget = budget_bytes(tensors, lambda s, dt: workspace_bytes(s, cfg, opts, dt, False))
    return fd_batches(plans, cfg.rank, within(budget, replay, lambda key, count: count * key[0] * key[2] * sb))


def member_blocks_copied(mp: MatrixPlan) -> bool:
    """Whether ``SketchyRule.run_batch`` stacks a member's blocks (a copy) before unfolding them: unless the
    tensor is one block, which is the merged gradient itself."""
    return not (len(mp.groups) == 1 and mp.groups[0][1] == 1)


def fd_batch(live: Live, key: tuple, members: tuple, plans: list, tensors: list, sb: int, variant: str) -> None:
    """``SketchyRule.run_batch``: the members' unfoldings copied into one (count, d, m) stack (scaled in place
    when β2 < 1), each member's blocks stacked in its gradient's dtype on the way (one member at a time), the
    sketches stacked (copies when there are several members), the FD update, each member's slice copied back.
    A failed stack's per-member retry runs with the stack freed and only x alive, its transients a member's share
    of the stack's, so it stays under this peak."""
    d, k, m = key
    count = sum(mm.count for mm in members)
    x = live.alloc(count * d * m * sb)
    for mm in members:
        if member_blocks_copied(plans[mm.tensor]):
            live.spike(mm.count * d * m * dtype_bytes(tensors[mm.tensor][1]))
    stacked = live.alloc(count * (d * k + k + 1) * sb) if len(members) > 1 else 0
    new = fd_transients(live, count, d, k, m, sb, variant)
    live.free(x + stacked + new)


def group_workspace_bytes(tensors: list[tuple[tuple[int, ...], str]], cfg: MethodConfig, opts: OptimizerDefaults,
                          scratch: bool = True) -> int | None:
    """High-water mark of a param group's step when its FD updates run in batched calls across tensors
    (``transients.batched_group``); None when the group steps tensor by tensor (``methods.batching``)."""
    sb = dtype_bytes(opts.state_dtype)
    return batched_group(sys.modules[__name__], tensors, cfg, opts, scratch, kernel="stats",
                         batch=lambda live, b, plans: fd_batch(live, b.key, b.members, plans, tensors, sb,
                                                               opts.fd_variant),
                         stats=stats_transients(cfg, opts), precondition=precondition_transients(cfg))


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
