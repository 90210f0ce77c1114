"""An independent float64 NumPy implementation of one Frequent-Directions update in covariance form (Liberty 2013;
Ghashami, Liberty, Phillips & Woodruff 2016; the Sketchy paper's Algorithm 1), written from the papers for the
tests of both the torch and the JAX kernels — not from sketchplan's code.

One update of a rank-k sketch (U: d × k, σ²: k, ρ) with new columns X (d × n) and decay β2:

    Y = [√β2 · U diag(σ), X]                       (d × (k + n))
    Y = u diag(s) vᵀ                                (thin SVD, s descending)
    c = s²_{k+1}  (0 when Y has at most k singular values)
    σ² ← (s²_{1..k} − c)₊,  U ← u[:, :k],  ρ ← β2·ρ + c
"""

from __future__ import annotations

import numpy as np


def fd_step(u: np.ndarray, sig2: np.ndarray, rho: float, x: np.ndarray, beta2: float):
    """One FD update of a single (unbatched) sketch, in float64."""
    u, sig2, x = (np.asarray(a, np.float64) for a in (u, sig2, x))
    d, k = u.shape
    y = np.concatenate([np.sqrt(beta2) * u * np.sqrt(np.maximum(sig2, 0))[None, :], x], axis=1)
    left, s, _ = np.linalg.svd(y, full_matrices=False)
    s2 = s**2
    c = s2[k] if s2.shape[0] > k else 0.0
    kept = min(k, s2.shape[0])
    new_u = np.zeros((d, k))
    new_u[:, :kept] = left[:, :kept]
    new_sig2 = np.zeros(k)
    new_sig2[:kept] = np.maximum(s2[:kept] - c, 0)
    return new_u, new_sig2, beta2 * float(rho) + c


def truncation_step(u: np.ndarray, sig2: np.ndarray, rho: float, x: np.ndarray, beta2: float):
    """The tempting wrong update: keep the top k of Y without the shrink (no −c, ρ unchanged)."""
    u, sig2, x = (np.asarray(a, np.float64) for a in (u, sig2, x))
    d, k = u.shape
    y = np.concatenate([np.sqrt(beta2) * u * np.sqrt(np.maximum(sig2, 0))[None, :], x], axis=1)
    left, s, _ = np.linalg.svd(y, full_matrices=False)
    kept = min(k, s.shape[0])
    new_u, new_sig2 = np.zeros((d, k)), np.zeros(k)
    new_u[:, :kept], new_sig2[:kept] = left[:, :kept], s[:kept] ** 2
    return new_u, new_sig2, beta2 * float(rho)


def sketch(u: np.ndarray, sig2: np.ndarray) -> np.ndarray:
    """Ĉ = U diag(σ²) Uᵀ."""
    return (u * sig2[None, :]) @ u.T


def invariant_gap(cov: np.ndarray, u: np.ndarray, sig2: np.ndarray, rho: float) -> tuple[float, float]:
    """(λ_min(C − Ĉ), ρ − λ_max(C − Ĉ)) relative to tr C: FD guarantees both ≥ 0 (0 ≼ C − Ĉ ≼ ρI)."""
    w = np.linalg.eigvalsh(cov - sketch(u, sig2))
    scale = np.trace(cov)
    return w[0] / scale, (rho - w[-1]) / scale
