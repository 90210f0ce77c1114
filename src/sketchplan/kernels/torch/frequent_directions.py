"""Frequent Directions in covariance form (Liberty 2013; Ghashami, Liberty, Phillips & Woodruff 2016),
batched over a leading block dimension (docs/algorithms.md, Frequent Directions).

The sketch Ĉ = U diag(σ²) Uᵀ (U: d × k, orthonormal columns or zero columns) and the escaped mass ρ track
C_t = Σ_s β2^(t−s) X_s X_sᵀ. One update with new columns X (d × N):

1. Y = [√β2 · U diag(σ), X]  (d × (k+N));
2. the squared singular values s² (descending) and left singular vectors u of Y;
3. c = s²_{k+1} (0 when Y has ≤ k singular values); σ² ← s²_{1..k} − c; U ← u[:, :k];
4. ρ ← β2·ρ + c.

Invariant: 0 ≼ C_t − Ĉ_t ≼ ρ_t I. Step 2 has four interchangeable variants (same sketch up to rounding):

- ``svd``: thin SVD of the d × (k+N) matrix Y;
- ``gram_small``: eigh of the (k+N) × (k+N) Gram YᵀY, u = Y v / s (cheap when k+N ≪ d);
- ``gram_large``: eigh of the d × d Gram Y Yᵀ = β2 U diag(σ²) Uᵀ + X Xᵀ, formed without Y (cheap when k+N ≥ d);
- ``qr_svd``: QR of Yᵀ, then SVD of the small triangular factor (helps when N ≫ d).

A fifth variant, ``subspace``, approximates step 2 in O(d·(k+N)·l) with l = k + max(8, k/16) columns
(``kernels.calls.subspace_width``) instead of O(d³) or O(d·(k+N)²): a randomized range finder (Halko, Martinsson
& Tropp 2011, "Finding structure with randomness", Alg. 4.4) warm-started from the previous sketch. The basis is
Q = [U, P]: the previous directions U (orthonormal already) and P, an orthonormal basis of l − k Gaussian mixes
X Ω made orthogonal to U by block Gram–Schmidt (``kernels.calls.subspace_gs_passes``: twice for the final basis,
once for those that only seed a power step), refined by ``SUBSPACE_POWER_STEPS`` power steps on the part of X
outside U, P ← orth((I − UUᵀ) X Xᵀ P) — O(d·N·(l−k)) each, where a power step on all of Y Yᵀ costs
O(d·(k+N)·l) and a QR of d × l (a sketch with fewer than k directions starts from the Gaussian range finder
Y Ω with power steps Q ← qr(Y Yᵀ Q)). Then Rayleigh–Ritz: B = QᵀY (l × w), B Bᵀ = ub diag(sb²) ubᵀ,
V_k = Bᵀ ub_k / sb_k (orthonormal in R^w whatever Q is), c = sb²_{k+1}. The new sketch is not the Ritz
projection but the compression

    Ĉ' = Z Zᵀ = Y Π Yᵀ,  Z = Y V_k diag(√(1 − c/sb²)),  Π = V_k diag(1 − c/sb²) V_kᵀ,  0 ≼ Π ≼ I,

so Ĉ' ≼ Y Yᵀ for whatever basis the iteration found (with the exact V_k it equals the exact update
u diag(s² − c) uᵀ), and the escaped mass grows by an estimate of the largest eigenvalue it leaves out:
ρ' = β2 ρ + max(c, λ̂), λ̂ the largest Ritz value of Y Yᵀ − Z Zᵀ ≽ 0 on a Krylov space of dimension
``SUBSPACE_ESTIMATE_STEPS`` (``_largest_eigenvalue``: Lanczos with full reorthogonalisation, 5 row products
where 8 power steps took 9, with a shortfall as small or smaller). U, σ² are read off Z by eigh of the k × k
ZᵀZ (the ``gram_small`` step). Guarantee: the lower half of the invariant, 0 ≼ C_t − Ĉ_t, holds exactly (up to
rounding); the upper half, C_t − Ĉ_t ≼ ρ_t I, holds up to Σ_s β2^(t−s) e_s where e_s ≥ 0 is the estimate's
shortfall λmax(Y Yᵀ − Z Zᵀ) − max(c, λ̂) at step s (measured against float64 exact FD in
``tests/test_fd_subspace.py``). Two shapes make the variant exact FD: when the basis can hold all of Y (l = k + N:
a vector's sketch, or a few new columns), Q = [U, P] with P an orthonormal basis of X's part outside U (zero
columns where that part is rounding noise) spans Y, B Bᵀ = diag(β2 σ², 0) + (QᵀX)(QᵀX)ᵀ is formed from QᵀX
alone, U' = Q ub_k, σ'² = sb²_k − c, and no estimate is needed; when it is all of R^d (l = d < k + N: an axis
of at most k + max(8, k/16) entries), Q = I and the Ritz step is ``gram_large``'s eigh of the d × d Gram.
The random matrices come from a generator with a fixed seed, so an update is deterministic.

``auto`` picks ``subspace`` where it is exact and modelled no slower, or where the exact update is large and the
approximation much cheaper (``choose_variant``: LAPACK's SVD runs at a fraction of the rate of the subspace
variant's gemms and eighs), else ``svd``: the Gram variants square the conditioning, ~10× less accurate in float32 on decaying spectra, although
``gram_large`` is faster when k+N ≥ d (on a 2-core CPU the eigh of a 1024 × 1024 Gram took 0.08 s, the thin SVD
of the 1024 × 1024 Y 0.22 s); name it to trade accuracy for speed. A variant that fails in float32 is retried in float64; if that fails too, the sketch
is left unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..calls import (FD_VARIANTS, SUBSPACE_ESTIMATE_STEPS, SUBSPACE_POWER_STEPS, THIN_COLUMNS, choose_variant,
                     subspace_gs_passes, subspace_width)
from .products import thin_matmul
from .roots import qr_pair, qr_q, safe_eigh

__all__ = ["FD_VARIANTS", "choose_variant", "fd_update"]


def _scaled_sketch(u: torch.Tensor, sig2: torch.Tensor, beta2: float) -> torch.Tensor:
    """A = √β2 · U diag(σ), the sketch's columns of Y = [A, X]."""
    return u * (beta2 * sig2).clamp_min(0).sqrt().unsqueeze(-2)


def _sketch_columns(u: torch.Tensor, sig2: torch.Tensor, x: torch.Tensor, beta2: float) -> torch.Tensor:
    """Y = [√β2 · U diag(σ), X]."""
    return torch.cat([_scaled_sketch(u, sig2, beta2), x], dim=-1)


def _gram_left(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Squared singular values (descending) and left singular vectors of y (d × r) from eigh of the r × r Gram
    yᵀy: u = y v / s, with directions whose s is below r·eps·s_max dropped (zero value, zero vector)."""
    dec = safe_eigh(y.mT @ y)
    if dec is None:
        return None
    w, v = dec
    w, v = w.flip(-1).clamp_min(0), v.flip(-1)
    s = w.sqrt()
    keep = s > s[..., :1] * (y.shape[-1] * torch.finfo(y.dtype).eps)
    # u = y (v / s), dropped directions as zero columns of v: one product, no pass over the d × r result
    left = y @ (v * torch.where(keep, s.reciprocal(), 0.0).unsqueeze(-2))
    return torch.where(keep, w, torch.zeros_like(w)), left


def _left_spectrum(u: torch.Tensor, sig2: torch.Tensor, x: torch.Tensor, beta2: float,
                   variant: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Squared singular values of Y (descending) and matching left singular vectors, or None on failure."""
    if variant == "gram_large":
        gram = (u * (beta2 * sig2).unsqueeze(-2)) @ u.mT + x @ x.mT
        dec = safe_eigh(gram)
        if dec is None:
            return None
        w, v = dec
        return w.flip(-1).clamp_min(0), v.flip(-1)
    y = _sketch_columns(u, sig2, x, beta2)
    if variant == "gram_small":
        return _gram_left(y)
    if variant not in ("svd", "qr_svd"):
        raise ValueError(f"unknown FD variant {variant!r}; use one of {', '.join(FD_VARIANTS)} or auto")
    for dt in dict.fromkeys([y.dtype, torch.float64]):
        try:
            yy = y.to(dt)
            if variant == "qr_svd":
                _, r = torch.linalg.qr(yy.mT)  # Yᵀ = Q R, so Y = Rᵀ Qᵀ has the left factor of Rᵀ
                yy = r.mT
            left, s, _ = torch.linalg.svd(yy, full_matrices=False)
        except RuntimeError:
            continue
        if bool(torch.isfinite(s.sum())) and bool(torch.isfinite(left.sum())):  # sums: no mask as large as U
            return (s * s).to(y.dtype), left.to(y.dtype)
        del left, s, _
    return None


def _randn(gen: torch.Generator, *shape: int, like: torch.Tensor) -> torch.Tensor:
    """Gaussian draws made in float32 whatever ``like``'s dtype (the same matrix for every dtype)."""
    return torch.randn(*shape, generator=gen, dtype=torch.float32, device=like.device).to(like.dtype)


def _orthogonal_to(u: torch.Tensor, p: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """An orthonormal basis of p's columns made orthogonal to U's: block Gram–Schmidt twice ("twice is
    enough", Giraud, Langou & Rozložník 2005), then QR of the d × m remainder (U's zero columns are no-ops).
    ``passes=1`` for a basis that only seeds the next power step (``kernels.calls.subspace_gs_passes``)."""
    for _ in range(passes):
        p = _project_out(u, p)
    return qr_q(p)


def _project_out(u: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """One block Gram–Schmidt pass: P − U (Uᵀ P)."""
    return p - thin_matmul(u, thin_matmul(u.mT, p))


def _subspace_exact(u: torch.Tensor, sig2: torch.Tensor, rho: torch.Tensor, x: torch.Tensor, beta2: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The ``subspace`` variant where its basis holds all of Y (l = k + n): Q = [U, P], P = ``_outside(U, X)``, spans Y,
    so the Ritz pairs of B = QᵀY are Y's exact singular pairs and the update is exact FD: U' = Q ub_k,
    σ'² = sb²_k − c, c = sb²_{k+1}, no estimate. B is taken from its structure, QᵀA = [diag(√β2 σ); 0] and
    QᵀX = [UᵀX; PᵀX], so B Bᵀ is diag(β2 σ², 0) + (QᵀX)(QᵀX)ᵀ: O(d·k·n + d·n² + (k+n)³ + d·(k+n)·k) with no
    d × (k+n) copy of Y or Q (for a vector, n = 1, the eigh of the (k+1)² matrix and U' are the work)."""
    k = u.shape[-1]
    p = _outside(u, x)
    ritz = _warm_ritz(u, p, sig2, x, beta2)
    if ritz is None:
        return None
    _, s2, ub = ritz
    c = s2[..., k]
    top = s2[..., :k]
    keep = top > top[..., :1] * (s2.shape[-1] * torch.finfo(x.dtype).eps)
    new_u = thin_matmul(u, ub[..., :k, :k]).add_(thin_matmul(p, ub[..., k:, :k])) * keep.unsqueeze(-2)
    return new_u, torch.where(keep, top - c.unsqueeze(-1), 0.0), beta2 * rho + c


def _outside(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis P of the part of X (d × n) outside span(U), for the exact path, where U' = Q ub_k needs
    Q = [U, P] orthonormal: Gram–Schmidt twice, then QR, with the columns whose R diagonal is at rounding level
    (|R_jj| ≤ max(d, n)·eps·‖x_j‖: a new column inside span(U), or inside the span of the earlier ones) made zero
    — QR scales such a column's rounding noise to a unit vector that is not orthogonal to U. A third pass removes
    from the kept columns what rounding left along U, and they are normalised again."""
    r = _project_out(u, _project_out(u, x))
    q, rr = qr_pair(r)
    del r
    tol = x.norm(dim=-2) * (max(x.shape[-2], x.shape[-1]) * torch.finfo(x.dtype).eps)
    keep = rr.diagonal(dim1=-2, dim2=-1).abs() > tol
    del rr, tol
    q = _project_out(u, q)
    return q * torch.where(keep, q.norm(dim=-2).reciprocal(), 0.0).unsqueeze(-2)


def _warm_ritz(u: torch.Tensor, p: torch.Tensor, sig2: torch.Tensor, x: torch.Tensor, beta2: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Rayleigh–Ritz of Y Yᵀ on Q = [U, P] with P ⟂ U: returns QᵀX (l × n) and the descending pairs (sb², ub) of
    B Bᵀ = diag(β2 σ², 0) + (QᵀX)(QᵀX)ᵀ. QᵀA = [diag(√β2 σ); 0] is taken as such (no l·d·k product); any B whose
    pairs build the new sketch keeps the contract (module docstring), so rounding in U's orthonormality and in
    P ⟂ U cannot break it."""
    k = u.shape[-1]
    bx = torch.cat([thin_matmul(u.mT, x), thin_matmul(p.mT, x)], dim=-2)
    bb = bx @ bx.mT
    bb[..., :k, :k].diagonal(dim1=-2, dim2=-1).add_((beta2 * sig2).clamp_min(0))
    dec = safe_eigh(bb)
    del bb
    if dec is None:
        return None
    return bx, dec[0].flip(-1).clamp_min(0), dec[1].flip(-1)


def _yyt(a: torch.Tensor, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Y Yᵀ Q = A (Aᵀ Q) + X (Xᵀ Q) for Y = [A, X], without forming Y."""
    out = thin_matmul(a, thin_matmul(a.mT, q))
    return out.add_(thin_matmul(x, thin_matmul(x.mT, q)))


def _subspace_update(u: torch.Tensor, sig2: torch.Tensor, rho: torch.Tensor, x: torch.Tensor,
                     beta2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The ``subspace`` variant (module docstring), or None when an eigh fails in float32 and float64.

    Y = [A, X] (A = √β2 · U diag(σ)) is never formed: every product with Y is split into its A and X parts, which
    saves a d × (k+n) copy per axis (13% of a k = 64 step on CPU, where X is often a transposed view) and its
    memory; a warm step does not form A either (A Aᵀ = U diag(β2 σ²) Uᵀ)."""
    d, k, n = u.shape[-2], u.shape[-1], x.shape[-1]
    w, l = k + n, subspace_width(d, k, n)
    if l == w:
        return _subspace_exact(u, sig2, rho, x, beta2)
    gen = torch.Generator(device=x.device).manual_seed(20)
    d2 = (beta2 * sig2).clamp_min(0)                     # β2 σ², A Aᵀ = U diag(β2 σ²) Uᵀ
    if l > k and bool((sig2[..., -1] > 0).all()):
        # warm: Q = [U, P], U the previous directions (orthonormal: no QR of the d × l basis), P an orthonormal
        # basis of l − k random mixes of X made orthogonal to U, refined by power steps on the part of X outside
        # U, (I − UUᵀ) X Xᵀ (I − UUᵀ): O(d·n·(l−k)) each, where a power step on all of Y Yᵀ costs O(d·(k+n)·l)
        first, *later = subspace_gs_passes()
        p = _orthogonal_to(u, thin_matmul(x, _randn(gen, n, l - k, like=x)), first)
        for passes in later:
            p = _orthogonal_to(u, thin_matmul(x, thin_matmul(x.mT, p)), passes)
        ritz = _warm_ritz(u, p, sig2, x, beta2)
        del p
        if ritz is None:
            return None
        bx, s2, ub = ritz
        del ritz
        a = ba = None

        def a_rows(v: torch.Tensor) -> torch.Tensor:                  # v A Aᵀ for rows v
            return ((v @ u) * d2.unsqueeze(-2)) @ u.mT
    else:  # a sketch with fewer than k directions: a Gaussian range finder on Y with power steps on Y Yᵀ
        a = _scaled_sketch(u, sig2, beta2)
        om = _randn(gen, w, l, like=x)
        yo = thin_matmul(a, om[..., :k, :]).add_(thin_matmul(x, om[..., k:, :]))   # Y Ω
        del om
        q = qr_q(yo)
        del yo
        for _ in range(SUBSPACE_POWER_STEPS):
            q = qr_q(_yyt(a, x, q))
        ba, bx = q.mT @ a, q.mT @ x                      # B = QᵀY = [QᵀA, QᵀX]
        del q
        bb = bx @ bx.mT
        bb += ba @ ba.mT
        dec = safe_eigh(bb)
        del bb
        if dec is None:
            return None
        s2, ub = dec[0].flip(-1).clamp_min(0), dec[1].flip(-1)
        del dec

        def a_rows(v: torch.Tensor, a: torch.Tensor = a) -> torch.Tensor:
            return (v @ a) @ a.mT
    ub = ub[..., :k]
    c = s2[..., k]
    top = s2[..., :k]
    keep = top > top[..., :1] * (w * torch.finfo(x.dtype).eps)
    coef = torch.where(keep, (top - c.unsqueeze(-1)).clamp_min(0).sqrt() / torch.where(keep, top, 1.0), 0.0)
    m = ub * coef.unsqueeze(-2)
    del ub
    # Z = Y V_k diag(√(1 − c/sb²)) = Y Bᵀ M = A (QᵀA)ᵀ M + X (QᵀX)ᵀ M, Ĉ' = Z Zᵀ ≼ Y Yᵀ
    if ba is None:  # warm: A (QᵀA)ᵀ M = U diag(β2 σ²) M[:k]
        z = thin_matmul(u, d2.unsqueeze(-1) * m[..., :k, :])
    else:
        z = thin_matmul(a, thin_matmul(ba.mT, m))
    del ba
    xm = thin_matmul(bx.mT, m)
    del bx, m
    if z.dim() == 3 and k > THIN_COLUMNS:  # accumulated by the product itself: no d × k temporary
        z.baddbmm_(x, xm)
    else:
        z.add_(thin_matmul(x, xm))
    del xm

    def left_out_rows(v: torch.Tensor, a_rows: Callable[[torch.Tensor], torch.Tensor] = a_rows) -> torch.Tensor:
        return a_rows(v) + (v @ x) @ x.mT - (v @ z) @ z.mT               # v (Y Yᵀ − Z Zᵀ)

    lam = _largest_eigenvalue(left_out_rows, _randn(gen, 1, d, like=x).expand(*z.shape[:-2], 1, d),
                              SUBSPACE_ESTIMATE_STEPS)
    del a, a_rows, left_out_rows                          # (cold: A, which the row products held, is freed)
    spec = None if lam is None else _gram_left(z)
    if spec is None:
        return None
    new_sig2, new_u = spec
    return new_u, new_sig2, beta2 * rho + torch.maximum(lam, c)


def _largest_eigenvalue(rows: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, steps: int
                        ) -> torch.Tensor | None:
    """A lower estimate of λmax(M) for M ≽ 0 given as ``rows(v) = v M`` on (…, 1, d) rows: the largest Ritz value
    of M on the Krylov space span{v, vM, …, vM^(steps−1)} (Lanczos with full reorthogonalisation; Saad 2011,
    "Numerical methods for large eigenvalue problems", §6.3). It is at most λmax (a Rayleigh–Ritz value on an
    orthonormal basis) and at least the Rayleigh quotient of every vector of the space, the power iterate
    v M^(steps−1) among them. With 5 steps its worst shortfall on the contract streams of
    tests/test_fd_subspace.py (4 shapes × 8 seeds) was no larger than that of 8 power steps (9 row products).
    Row products: vᵀ Y and (·) Yᵀ run at memory speed whatever the layout, where the
    column form Yᵀ v (a transposed batched matrix-vector product) ran ~60× slower on CPU (7.9 ms against 0.13 ms
    for three 1024 × 1024 blocks)."""
    tiny = torch.finfo(v.dtype).tiny
    basis = v / v.norm(dim=-1, keepdim=True).clamp_min(tiny)
    images = rows(basis)
    for _ in range(steps - 1):
        r = images[..., -1:, :]
        for _ in range(2):                              # Gram–Schmidt twice, normalising each time
            r = r - (r @ basis.mT) @ basis
            r = r / r.norm(dim=-1, keepdim=True).clamp_min(tiny)
        basis = torch.cat([basis, r], dim=-2)
        images = torch.cat([images, rows(r)], dim=-2)
    t = images @ basis.mT                                # Qᵀ M Q (steps × steps)
    if not bool(torch.isfinite(t.sum())):                # an overflow: the update fails, the sketch is kept
        return None
    t = t.double()  # steps × steps: float64 whatever the state dtype (LAPACK has no half-precision eigh)
    return torch.linalg.eigvalsh((t + t.mT) / 2)[..., -1].to(v.dtype)


def fd_update(u: torch.Tensor, sig2: torch.Tensor, rho: torch.Tensor, x: torch.Tensor, beta2: float,
              variant: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FD step (module docstring), batched: u (b, d, k), sig2 (b, k), rho (b,), x (b, d, N).

    Returns new (u, sig2, rho); the inputs are not modified. When the update fails (an eigh or QR that float32
    and float64 both refuse, for any matrix of the batch) it returns the input tensors themselves, so the caller
    keeps the sketch and can tell (``SketchyRule.run_batch`` retries a stack member by member). Rank k ≤ d is the
    column count of ``u``.
    """
    d, k, n = u.shape[-2], u.shape[-1], x.shape[-1]
    if variant == "auto":
        variant = choose_variant(d, k, n)
    full = variant == "subspace" and subspace_width(d, k, n) == d < k + n
    if variant == "subspace" and not full:
        try:
            new = _subspace_update(u, sig2, rho, x, beta2)
        except RuntimeError:  # a QR LAPACK could not do (torch.linalg.LinAlgError): the sketch is kept, as below
            new = None
        return (u, sig2, rho) if new is None else new
    # l = d < k + n: the subspace variant's basis is all of R^d, its Ritz step the eigh of the d × d Gram
    spec = _left_spectrum(u, sig2, x, beta2, "gram_large" if full else variant)
    if spec is None:
        return u, sig2, rho
    w, left = spec
    c = w[..., k] if w.shape[-1] > k else torch.zeros_like(rho)
    new_sig2 = (w[..., :k] - c.unsqueeze(-1)).clamp_min(0)
    new_u = left[..., :, :k].contiguous() if left.shape[-1] > k else left   # (k = d: all of it, no copy)
    if full:  # directions of (numerically) zero value are zero columns, as the other subspace paths leave them
        keep = w[..., :k] > w[..., :1] * ((k + n) * torch.finfo(x.dtype).eps)
        new_u, new_sig2 = new_u * keep.unsqueeze(-2), torch.where(keep, new_sig2, 0.0)
    return new_u, new_sig2, beta2 * rho + c
