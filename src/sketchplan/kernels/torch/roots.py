"""Symmetric matrix powers and inverse roots, batched over a leading dimension (docs/algorithms.md, Shampoo).

Shampoo needs P = (S + εI)^(−1/p) (p = 2·order) of symmetric positive semi-definite statistics S; KrADagrad
needs positive powers of its inverse statistics. Two kernels:

- ``symmetric_power`` by eigendecomposition: S = V diag(λ) Vᵀ, S^a = V diag((max(λ, 0) + ε)^a) Vᵀ. It runs in
  the input dtype (float32), retries in float64 when eigh fails or returns non-finite values, and returns
  ``previous`` (the last good root) when both fail.
- ``inverse_root_newton``: the coupled Newton iteration for A^(−1/p) (Guo & Higham 2006, as used by Anil et al.
  2020, "Scalable second order optimization for deep learning"): M₀ = zA, X₀ = z^(1/p) I with z = (1+p)/(2‖A‖_F);
  T = ((p+1)I − M)/p, X ← X T, M ← T^p M until ‖M − I‖_max < tol. Only matrix products, so it suits accelerators
  without a fast eigh.

Host synchronisation: both read a few scalars back (is the result finite? did the iteration converge?). They run
only every ``precondition_frequency`` steps, and eigh synchronises on accelerators anyway.
"""

from __future__ import annotations

import torch


def safe_eigh(mats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Eigenvalues (ascending) and eigenvectors of symmetric ``mats`` (..., d, d), in ``mats.dtype``.

    Tries the input dtype first, then float64 (float32 eigh does fail on the rank-deficient statistics of real
    training, e.g. an embedding whose rows a batch never touched). Returns None when both raise or give
    non-finite values. Memory (``methods.transients.eigh_power``): a failed attempt's outputs are dropped before
    the retry, and finiteness is checked on sums (a NaN or Inf anywhere makes the sum non-finite; only an
    overflowing sum of finite values is a false alarm), so no mask as large as the vectors is made.
    """
    dtypes = [mats.dtype] if mats.dtype == torch.float64 else [mats.dtype, torch.float64]
    for dt in dtypes:
        try:
            w, v = torch.linalg.eigh(mats.to(dt))
        except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
            continue
        if bool(torch.isfinite(w.sum())) and bool(torch.isfinite(v.sum())):
            return w.to(mats.dtype), v.to(mats.dtype)
        del w, v
    return None


def qr_q(a: torch.Tensor) -> torch.Tensor:
    """Q of the reduced QR factorisation of ``a`` (..., m, n), in ``a``'s dtype. LAPACK and cuSOLVER have no
    bfloat16 or float16 QR, so a half-precision input is factored in float32 and Q cast back. Memory
    (``methods.transients.qr_transients``): Q and R, R dropped on return; for half precision the float32 copy,
    then Q cast while the float32 pair is alive."""
    if a.dtype in (torch.bfloat16, torch.float16):
        return torch.linalg.qr(a.float()).Q.to(a.dtype)
    return torch.linalg.qr(a).Q


def qr_pair(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q and R of the reduced QR factorisation of ``a`` (..., m, n), in ``a``'s dtype (half precision factored in
    float32, as ``qr_q``). Memory (``methods.transients.qr_pair_transients``): both kept."""
    if a.dtype in (torch.bfloat16, torch.float16):
        q, r = torch.linalg.qr(a.float())
        return q.to(a.dtype), r.to(a.dtype)
    q, r = torch.linalg.qr(a)
    return q, r


def regularize(w: torch.Tensor, eps: float, mode: str = "absolute") -> torch.Tensor:
    """Eigenvalues ``w`` (..., d) of a PSD statistic made safe for a negative power (``OptimizerDefaults.
    epsilon_mode``): ``absolute`` max(λ, 0) + ε; ``relative`` max(λ, 0) + ε·λ_max (ε when λ_max ≤ 0);
    ``shift`` λ − min(λ_min, 0) + ε."""
    if mode == "absolute":
        return w.clamp_min(0) + eps
    if mode == "relative":
        top = w.amax(dim=-1, keepdim=True)
        return w.clamp_min(0) + eps * torch.where(top > 0, top, torch.ones_like(top))
    if mode == "shift":
        return w - w.amin(dim=-1, keepdim=True).clamp_max(0) + eps
    raise ValueError(f"unknown epsilon_mode {mode!r}; use absolute, relative or shift")


def symmetric_power(mats: torch.Tensor, exponent: float, eps: float,
                    previous: torch.Tensor | None = None, mode: str = "absolute") -> torch.Tensor:
    """(S + εI)^exponent of symmetric PSD ``mats`` (..., d, d) by eigh; the eigenvalues are regularised by
    ``regularize(λ, ε, mode)`` (``absolute``: clamped at 0, plus ε).

    Falls back to float64 when the float32 eigh fails, and to ``previous`` when both fail (with no previous
    root, the identity: an unpreconditioned step). Negative exponents need ε > 0 for singular S.
    """
    out = eigh_power(mats, exponent, eps, mode)
    if out is None:
        if previous is not None:
            return previous
        return torch.eye(mats.shape[-1], dtype=mats.dtype, device=mats.device).expand_as(mats).clone()
    return out


def eigh_power(mats: torch.Tensor, exponent: float, eps: float, mode: str = "absolute") -> torch.Tensor | None:
    """``symmetric_power`` without its fallback: V diag(regularize(λ)^exponent) Vᵀ, or None when eigh fails in
    float32 and float64 (memory: ``methods.transients.eigh_power``)."""
    dec = safe_eigh(mats)
    if dec is None:
        return None
    w, v = dec
    scale = regularize(w, eps, mode).pow(exponent)
    return (v * scale.unsqueeze(-2)) @ v.mT


def inverse_root_newton(mats: torch.Tensor, p: int, eps: float, previous: torch.Tensor | None = None,
                        max_iters: int = 100, tol: float = 1e-6, mode: str = "absolute") -> torch.Tensor:
    """(S + εI)^(−1/p) of symmetric PSD ``mats`` (..., d, d) by the coupled Newton iteration (module docstring).

    ``mode="relative"`` uses ε·‖S‖_F (an upper bound of λ_max: no eigenvalues here); ``shift`` is ``absolute``
    (the iteration never sees λ_min).

    Computes in float32 at least; returns ``previous`` (or the identity) if the iteration diverges or does not
    reach ``tol`` within ``max_iters`` iterations.
    """
    dt = torch.promote_types(mats.dtype, torch.float32)
    d = mats.shape[-1]
    eye = torch.eye(d, dtype=dt, device=mats.device)
    a = mats.to(dt)
    if mode == "relative":
        a = a + (eps * torch.linalg.matrix_norm(a))[..., None, None] * eye
    else:
        a = a + eps * eye
    z = (1 + p) / (2 * torch.linalg.matrix_norm(a).clamp_min(torch.finfo(dt).tiny))
    m = a * z[..., None, None]
    x = eye * z[..., None, None].pow(1.0 / p)
    for _ in range(max_iters):
        t = ((p + 1) * eye - m) / p
        x = x @ t
        m = torch.linalg.matrix_power(t, p) @ m
        err = (m - eye).abs().amax()
        if not bool(torch.isfinite(err)):
            break
        if float(err) < tol:
            return x.to(mats.dtype)
    if previous is not None:
        return previous
    return eye.to(mats.dtype).expand_as(mats).clone()
