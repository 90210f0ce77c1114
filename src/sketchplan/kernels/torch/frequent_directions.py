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
ρ' = β2 ρ + max(c, λ̂), λ̂ the Rayleigh quotient after ``SUBSPACE_ESTIMATE_STEPS`` power iterations on
Y Yᵀ − Z Zᵀ ≽ 0. U, σ² are read off Z by eigh of the k × k ZᵀZ (the ``gram_small`` step). Guarantee: the lower
half of the invariant, 0 ≼ C_t − Ĉ_t, holds exactly (up to rounding); the upper half, C_t − Ĉ_t ≼ ρ_t I, holds
up to Σ_s β2^(t−s) e_s where e_s ≥ 0 is the power estimate's shortfall λmax(Y Yᵀ − Z Zᵀ) − max(c, λ̂) at step s
(measured against float64 exact FD in ``tests/test_fd_subspace.py``). When the basis can hold all of Y
(l = k + N: a vector's sketch, or a few new columns) the variant is exact FD at O(d·(k+N)²): Q = [U, orth(X ⟂ U)]
spans Y, U' = Q ub_k, σ'² = sb²_k − c, and no estimate is needed. The random matrices come from a generator with
a fixed seed, so an update is deterministic.

``auto`` picks ``subspace`` where it is exact and modelled no slower, or where the exact update is large and the
approximation much cheaper (``choose_variant``: LAPACK's SVD runs at a fraction of the rate of the subspace
variant's gemms and eighs), else ``svd``: the Gram variants square the conditioning, ~10× less accurate in float32 on decaying spectra, although
``gram_large`` is faster when k+N ≥ d (on a 2-core CPU the eigh of a 1024 × 1024 Gram took 0.08 s, the thin SVD
of the 1024 × 1024 Y 0.22 s); name it to trade accuracy for speed. A variant that fails in float32 is retried in float64; if that fails too, the sketch
is left unchanged.
"""

from __future__ import annotations

import torch

from ..calls import (FD_VARIANTS, SUBSPACE_ESTIMATE_STEPS, SUBSPACE_POWER_STEPS, choose_variant, subspace_gs_passes,
                     subspace_width)
from .products import thin_matmul
from .roots import qr_q, safe_eigh

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
    left = (y @ v) / torch.where(keep, s, torch.ones_like(s)).unsqueeze(-2)
    return torch.where(keep, w, torch.zeros_like(w)), left * keep.unsqueeze(-2)


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
        p = p - thin_matmul(u, thin_matmul(u.mT, p))
    return qr_q(p)


def _ritz(q: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Rayleigh–Ritz of Y Yᵀ on the basis Q: B = QᵀY and the descending eigenpairs (sb², ub) of B Bᵀ."""
    b = q.mT @ y                                        # l × w
    dec = safe_eigh(b @ b.mT)
    if dec is None:
        return None
    return b, dec[0].flip(-1).clamp_min(0), dec[1].flip(-1)


def _subspace_exact(u: torch.Tensor, sig2: torch.Tensor, rho: torch.Tensor, x: torch.Tensor, beta2: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The ``subspace`` variant where its basis holds all of Y (l = k + n): Q = [U, orth(X ⟂ U)] spans Y, so the
    Ritz pairs of B = QᵀY are Y's exact singular pairs and the update is exact FD: U' = Q ub_k, σ'² = sb²_k − c,
    c = sb²_{k+1}, no estimate. O(d·(k+n)·n + d·(k+n)² + (k+n)³): for a vector (n = 1) a few d·k products, where
    the approximate path's range finder would run QRs of d × (k+1) bases."""
    k = u.shape[-1]
    q = torch.cat([u, _orthogonal_to(u, x)], dim=-1)
    out = _ritz(q, _sketch_columns(u, sig2, x, beta2))
    if out is None:
        return None
    _, s2, ub = out
    c = s2[..., k]
    top = s2[..., :k]
    keep = top > top[..., :1] * (s2.shape[-1] * torch.finfo(x.dtype).eps)
    new_u = (q @ ub[..., :k]) * keep.unsqueeze(-2)
    return new_u, torch.where(keep, top - c.unsqueeze(-1), 0.0), beta2 * rho + c


def _yyt(a: torch.Tensor, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Y Yᵀ Q = A (Aᵀ Q) + X (Xᵀ Q) for Y = [A, X], without forming Y."""
    out = thin_matmul(a, thin_matmul(a.mT, q))
    return out.add_(thin_matmul(x, thin_matmul(x.mT, q)))


def _subspace_update(u: torch.Tensor, sig2: torch.Tensor, rho: torch.Tensor, x: torch.Tensor,
                     beta2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The ``subspace`` variant (module docstring), or None when an eigh fails in float32 and float64.

    Y = [A, X] (A = √β2 · U diag(σ)) is never formed: every product with Y is split into its A and X parts, which
    saves a d × (k+n) copy per axis (13% of a k = 64 step on CPU, where X is often a transposed view) and its
    memory."""
    d, k, n = u.shape[-2], u.shape[-1], x.shape[-1]
    w, l = k + n, subspace_width(d, k, n)
    if l == w:
        return _subspace_exact(u, sig2, rho, x, beta2)
    gen = torch.Generator(device=x.device).manual_seed(20)
    a = _scaled_sketch(u, sig2, beta2)
    warm = False
    if l == d:  # the basis spans R^d: Q = I, B = Y (exact; no range finder, nothing to estimate)
        ba, bx = a, x
    elif l > k and bool((sig2[..., -1] > 0).all()):
        warm = True
        # warm: Q = [U, P], U the previous directions (orthonormal: no QR of the d × l basis), P an orthonormal
        # basis of l − k random mixes of X made orthogonal to U, refined by power steps on the part of X outside
        # U, (I − UUᵀ) X Xᵀ (I − UUᵀ): O(d·n·(l−k)) each, where a power step on all of Y Yᵀ costs O(d·(k+n)·l)
        first, *later = subspace_gs_passes()
        p = _orthogonal_to(u, thin_matmul(x, _randn(gen, n, l - k, like=x)), first)
        for passes in later:
            p = _orthogonal_to(u, thin_matmul(x, thin_matmul(x.mT, p)), passes)
        q = torch.cat([u, p], dim=-1)
        del p
    else:  # a sketch with fewer than k directions: a Gaussian range finder on Y with power steps on Y Yᵀ
        om = _randn(gen, w, l, like=x)
        yo = thin_matmul(a, om[..., :k, :]).add_(thin_matmul(x, om[..., k:, :]))   # Y Ω
        del om
        q = qr_q(yo)
        del yo
        for _ in range(SUBSPACE_POWER_STEPS):
            q = qr_q(_yyt(a, x, q))
    if l < d:  # Rayleigh–Ritz: B = QᵀY = [QᵀA, QᵀX], B Bᵀ = (QᵀA)(QᵀA)ᵀ + (QᵀX)(QᵀX)ᵀ
        # warm, Q = [U, P] with P ⟂ U: QᵀA = [diag(√β2 σ); 0], taken as such (no l·d·k product). Any B whose
        # eigenpairs build Z = Y Bᵀ M keeps Ĉ' ≼ Y Yᵀ (module docstring), so rounding in U's orthonormality and
        # in P ⟂ U cannot break the lower invariant.
        ba = None if warm else q.mT @ a
        bx = q.mT @ x
        del q
    bb = bx @ bx.mT
    if ba is None:
        bb[..., :k, :k].diagonal(dim1=-2, dim2=-1).add_((beta2 * sig2).clamp_min(0))
    else:
        bb += ba @ ba.mT
    dec = safe_eigh(bb)
    del bb
    if dec is None:
        return None
    s2, ub = dec[0].flip(-1).clamp_min(0), dec[1].flip(-1)[..., :k]
    del dec
    c = s2[..., k] if l > k else torch.zeros_like(rho)
    top = s2[..., :k]
    keep = top > top[..., :1] * (w * torch.finfo(x.dtype).eps)
    coef = torch.where(keep, (top - c.unsqueeze(-1)).clamp_min(0).sqrt() / torch.where(keep, top, 1.0), 0.0)
    m = ub * coef.unsqueeze(-2)
    del ub
    # Z = Y V_k diag(√(1 − c/sb²)) = Y Bᵀ M = A (QᵀA)ᵀ M + X (QᵀX)ᵀ M, Ĉ' = Z Zᵀ ≼ Y Yᵀ
    if ba is None:  # A (QᵀA)ᵀ M = U diag(β2 σ²) M[:k]
        z = thin_matmul(u, (beta2 * sig2).clamp_min(0).unsqueeze(-1) * m[..., :k, :])
    else:
        z = thin_matmul(a, thin_matmul(ba.mT, m))
    del ba
    z.add_(thin_matmul(x, thin_matmul(bx.mT, m)))
    del bx, m
    # Power iteration on Y Yᵀ − Z Zᵀ ≽ 0 with v a row (1 × d): vᵀ Y and (·) Yᵀ are row-times-matrix products,
    # which BLAS runs at memory speed whatever the layout, where the column form Yᵀ v (a transposed batched
    # matrix-vector product) ran ~60× slower on CPU (7.9 ms against 0.13 ms for three 1024 × 1024 blocks).
    # (l = d: the basis spans R^d, the update is exact and there is nothing to estimate)
    left_out = c
    if l < d:
        v = _randn(gen, 1, d, like=x).expand(*z.shape[:-2], 1, d)
        for _ in range(SUBSPACE_ESTIMATE_STEPS):
            r = (v @ a) @ a.mT + (v @ x) @ x.mT - (v @ z) @ z.mT
            v = r / r.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        r = (v @ a) @ a.mT + (v @ x) @ x.mT - (v @ z) @ z.mT
        left_out = torch.maximum((v * r).sum((-2, -1)), c)
        del v, r
    del a
    spec = _gram_left(z)
    if spec is None:
        return None
    new_sig2, new_u = spec
    return new_u, new_sig2, beta2 * rho + left_out


def fd_update(u: torch.Tensor, sig2: torch.Tensor, rho: torch.Tensor, x: torch.Tensor, beta2: float,
              variant: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FD step (module docstring), batched: u (b, d, k), sig2 (b, k), rho (b,), x (b, d, N).

    Returns new (u, sig2, rho); the inputs are not modified. Rank k ≤ d is the column count of ``u``.
    """
    d, k = u.shape[-2], u.shape[-1]
    if variant == "auto":
        variant = choose_variant(d, k, x.shape[-1])
    if variant == "subspace":
        new = _subspace_update(u, sig2, rho, x, beta2)
        return (u, sig2, rho) if new is None else new
    spec = _left_spectrum(u, sig2, x, beta2, variant)
    if spec is None:
        return u, sig2, rho
    w, left = spec
    c = w[..., k] if w.shape[-1] > k else torch.zeros_like(rho)
    new_sig2 = (w[..., :k] - c.unsqueeze(-1)).clamp_min(0)
    return left[..., :, :k].contiguous(), new_sig2, beta2 * rho + c
