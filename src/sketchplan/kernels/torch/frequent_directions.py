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

A fifth variant, ``subspace``, approximates step 2 in O(d·(k+N)·l) with l = k + max(8, k/8) columns
(``kernels.calls.subspace_width``) instead of O(d³) or O(d·(k+N)²): a randomized range finder (Halko, Martinsson
& Tropp 2011, "Finding structure with randomness", Alg. 4.4) warm-started from the previous sketch — the basis
starts from Y's own first k columns √β2·U diag(σ) plus l − k Gaussian mixes of X (a sketch without mass starts
from Y Ω) — then ``SUBSPACE_POWER_STEPS`` orthonormalised power steps Q ← qr(Y Yᵀ Q), and Rayleigh–Ritz:
B = QᵀY (l × w), B Bᵀ = ub diag(sb²) ubᵀ, V_k = Bᵀ ub_k / sb_k (orthonormal in R^w), c = sb²_{k+1}. The new
sketch is not the Ritz projection but the compression

    Ĉ' = Z Zᵀ = Y Π Yᵀ,  Z = Y V_k diag(√(1 − c/sb²)),  Π = V_k diag(1 − c/sb²) V_kᵀ,  0 ≼ Π ≼ I,

so Ĉ' ≼ Y Yᵀ for whatever basis the iteration found (with the exact V_k it equals the exact update
u diag(s² − c) uᵀ), and the escaped mass grows by an estimate of the largest eigenvalue it leaves out:
ρ' = β2 ρ + max(c, λ̂), λ̂ the Rayleigh quotient after ``SUBSPACE_ESTIMATE_STEPS`` power iterations on
Y Yᵀ − Z Zᵀ ≽ 0. U, σ² are read off Z by eigh of the k × k ZᵀZ (the ``gram_small`` step). Guarantee: the lower
half of the invariant, 0 ≼ C_t − Ĉ_t, holds exactly (up to rounding); the upper half, C_t − Ĉ_t ≼ ρ_t I, holds
up to Σ_s β2^(t−s) e_s where e_s ≥ 0 is the power estimate's shortfall λmax(Y Yᵀ − Z Zᵀ) − max(c, λ̂) at step s
(measured against float64 exact FD in ``tests/test_fd_subspace.py``). The random matrices come from a
generator with a fixed seed, so an update is deterministic.

``auto`` picks ``subspace`` when its modelled flops are well below the exact ``svd``'s (``choose_variant``), else
``svd``: the Gram variants square the conditioning, ~10× less accurate in float32 on decaying spectra, although
``gram_large`` is faster when k+N ≥ d (on a 2-core CPU the eigh of a 1024 × 1024 Gram took 0.08 s, the thin SVD
of the 1024 × 1024 Y 0.22 s); name it to trade accuracy for speed. A variant that fails in float32 is retried in float64; if that fails too, the sketch
is left unchanged.
"""

from __future__ import annotations

import torch

from ..calls import FD_VARIANTS, SUBSPACE_ESTIMATE_STEPS, SUBSPACE_POWER_STEPS, choose_variant, subspace_width
from .roots import safe_eigh

__all__ = ["FD_VARIANTS", "choose_variant", "fd_update"]


def _sketch_columns(u: torch.Tensor, sig2: torch.Tensor, x: torch.Tensor, beta2: float) -> torch.Tensor:
    """Y = [√β2 · U diag(σ), X]."""
    return torch.cat([u * (beta2 * sig2).clamp_min(0).sqrt().unsqueeze(-2), x], dim=-1)


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


def _subspace_update(u: torch.Tensor, sig2: torch.Tensor, rho: torch.Tensor, x: torch.Tensor,
                     beta2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The ``subspace`` variant (module docstring), or None when an eigh fails in float32 and float64."""
    d, k, n = u.shape[-2], u.shape[-1], x.shape[-1]
    w, l = k + n, subspace_width(d, k, n)
    gen = torch.Generator(device=x.device).manual_seed(20)
    y = _sketch_columns(u, sig2, x, beta2)
    if bool((sig2[..., 0] > 0).all()):  # warm: the previous directions (√β2 U σ) and l−k random mixes of X
        z = torch.cat([y[..., :k], x @ _randn(gen, n, l - k, like=x)], dim=-1)
    else:  # a sketch without mass: a Gaussian range finder on Y
        z = y @ _randn(gen, w, l, like=y)
    q = torch.linalg.qr(z).Q
    del z
    for _ in range(SUBSPACE_POWER_STEPS):               # subspace iteration on Y Yᵀ
        q = torch.linalg.qr(y @ (y.mT @ q)).Q
    b = q.mT @ y                                        # l × w
    del q
    dec = safe_eigh(b @ b.mT)                           # B Bᵀ = ub diag(sb²) ubᵀ
    if dec is None:
        return None
    s2, ub = dec[0].flip(-1).clamp_min(0), dec[1].flip(-1)[..., :k]
    del dec
    c = s2[..., k] if l > k else torch.zeros_like(rho)
    top = s2[..., :k]
    keep = top > top[..., :1] * (w * torch.finfo(y.dtype).eps)
    coef = torch.where(keep, (top - c.unsqueeze(-1)).clamp_min(0).sqrt() / torch.where(keep, top, 1.0), 0.0)
    z = y @ (b.mT @ (ub * coef.unsqueeze(-2)))          # Z = Y V_k diag(√(1 − c/sb²)), Ĉ' = Z Zᵀ ≼ Y Yᵀ
    del b, ub
    v = _randn(gen, d, 1, like=y).expand(*z.shape[:-2], d, 1)
    for _ in range(SUBSPACE_ESTIMATE_STEPS):            # power iteration on Y Yᵀ − Z Zᵀ ≽ 0
        r = y @ (y.mT @ v) - z @ (z.mT @ v)
        v = r / r.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
    r = y @ (y.mT @ v) - z @ (z.mT @ v)
    left_out = torch.maximum((v * r).sum((-2, -1)), c)
    del y, v, r
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
