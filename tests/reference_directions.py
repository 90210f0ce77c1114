"""Independent float64 NumPy implementations of the reference update directions, written for the tests from the
papers and the reference implementations' formulas (not from sketchplan's code): ungrafted Shampoo as in
DistributedShampoo (eigenvalue-regularised inverse roots) and Sketchy as in google-research/precondition
(Frequent-Directions sketch, escaped mass as ridge, Algorithm 1 of Feinberg et al. 2023).

Settings: no grafting, no momentum, β2 = 1 (running sums), learning rate 1, roots every step, so the step's
parameter change is minus the direction.
"""

from __future__ import annotations

import numpy as np

from fd_reference import fd_step


def _reg(w: np.ndarray, eps: float, mode: str) -> np.ndarray:
    if mode == "absolute":
        return np.maximum(w, 0) + eps
    if mode == "relative":
        top = w.max()
        return np.maximum(w, 0) + eps * (top if top > 0 else 1.0)
    if mode == "shift":
        return w - min(w.min(), 0.0) + eps
    raise ValueError(mode)


def _inv_root(s: np.ndarray, p: int, eps: float, mode: str) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * _reg(w, eps, mode) ** (-1.0 / p)) @ v.T


def shampoo_directions(grads: list[np.ndarray], eps: float, mode: str) -> list[np.ndarray]:
    """D_t = L_t^(−1/4) G_t R_t^(−1/4) with L_t = Σ G Gᵀ, R_t = Σ Gᵀ G (matrix gradients)."""
    m, n = grads[0].shape
    left, right, out = np.zeros((m, m)), np.zeros((n, n)), []
    for g in grads:
        g = np.asarray(g, np.float64)
        left += g @ g.T
        right += g.T @ g
        out.append(_inv_root(left, 4, eps, mode) @ g @ _inv_root(right, 4, eps, mode))
    return out


def _sketch_apply(u, sig2, rho, x, eps, mode):
    """(U diag(σ²) Uᵀ + ρI + ε'I)^(−1/4) x in float64 with the d × d matrix formed explicitly."""
    d = u.shape[0]
    cov = (u * sig2) @ u.T + rho * np.eye(d)
    w, v = np.linalg.eigh(cov)
    if mode == "relative":
        top = max(w.max(), 0.0)
        ridge = eps * (top if top > 0 else 1.0)
    else:
        ridge = eps
    return (v * (np.maximum(w, 0) + ridge) ** -0.25) @ v.T @ x


def sketchy_directions(grads: list[np.ndarray], rank: int, eps: float, mode: str) -> list[np.ndarray]:
    """FD sketches of Σ G Gᵀ and Σ Gᵀ G (rank min(k, d)), then D = Ŝ_L^(−1/4) G Ŝ_R^(−1/4)."""
    m, n = grads[0].shape
    kl, kr = min(rank, m), min(rank, n)
    sl = [np.zeros((m, kl)), np.zeros(kl), 0.0]
    sr = [np.zeros((n, kr)), np.zeros(kr), 0.0]
    out = []
    for g in grads:
        g = np.asarray(g, np.float64)
        sl = list(fd_step(*sl, g, 1.0))
        sr = list(fd_step(*sr, g.T, 1.0))
        d = _sketch_apply(*sl, g, eps, mode)
        d = _sketch_apply(*sr, d.T, eps, mode).T
        out.append(d)
    return out
