"""Frequent Directions in covariance form (Liberty 2013; Ghashami, Liberty, Phillips & Woodruff 2016),
batched over a leading block dimension (ALGORITHMS.md §3).

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

``auto`` is ``svd`` (``kernels.calls.choose_variant``): the Gram variants square the conditioning, ~10× less
accurate in float32 on decaying spectra, although ``gram_large`` is faster when k+N ≥ d (on a 2-core CPU the eigh
of a 1024 × 1024 Gram took 0.08 s, the thin SVD of the 1024 × 1024 Y 0.22 s); name it to trade accuracy for
speed. A variant that fails in float32 is retried in float64; if that fails too, the sketch
is left unchanged.
"""

from __future__ import annotations

import torch

from ..calls import FD_VARIANTS, choose_variant
from .roots import safe_eigh

__all__ = ["FD_VARIANTS", "choose_variant", "fd_update"]


def _sketch_columns(u: torch.Tensor, sig2: torch.Tensor, x: torch.Tensor, beta2: float) -> torch.Tensor:
    """Y = [√β2 · U diag(σ), X]."""
    return torch.cat([u * (beta2 * sig2).clamp_min(0).sqrt().unsqueeze(-2), x], dim=-1)


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
        dec = safe_eigh(y.mT @ y)
        if dec is None:
            return None
        w, v = dec
        w, v = w.flip(-1).clamp_min(0), v.flip(-1)
        s = w.sqrt()
        keep = s > s[..., :1] * (y.shape[-1] * torch.finfo(y.dtype).eps)
        left = (y @ v) / torch.where(keep, s, torch.ones_like(s)).unsqueeze(-2)
        return torch.where(keep, w, torch.zeros_like(w)), left * keep.unsqueeze(-2)
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


def fd_update(u: torch.Tensor, sig2: torch.Tensor, rho: torch.Tensor, x: torch.Tensor, beta2: float,
              variant: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FD step (module docstring), batched: u (b, d, k), sig2 (b, k), rho (b,), x (b, d, N).

    Returns new (u, sig2, rho); the inputs are not modified. Rank k ≤ d is the column count of ``u``.
    """
    d, k = u.shape[-2], u.shape[-1]
    if variant == "auto":
        variant = choose_variant(d, k, x.shape[-1])
    spec = _left_spectrum(u, sig2, x, beta2, variant)
    if spec is None:
        return u, sig2, rho
    w, left = spec
    c = w[..., k] if w.shape[-1] > k else torch.zeros_like(rho)
    new_sig2 = (w[..., :k] - c.unsqueeze(-1)).clamp_min(0)
    return left[..., :, :k].contiguous(), new_sig2, beta2 * rho + c
