"""Muon's Newton–Schulz orthogonalisation in torch (Jordan et al. 2024; catalogue entry ``newton_schulz``).

For a batch of m × n matrices G: X₀ = G / (‖G‖_F + ε) on the short side (Xᵀ when m > n), then ``iters`` times
A = X Xᵀ, X ← a X + (b A + c A²) X with the quintic coefficients (a, b, c). The result has G's singular
vectors and singular values pushed into a band around 1 (``methods.muon.NS_BAND``). Transients:
``methods.muon.ns_transients``.
"""

from __future__ import annotations

import torch

from ...methods.muon import NS_COEFFICIENTS, NS_EPS


def newton_schulz(g: torch.Tensor, iters: int, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = NS_EPS) -> torch.Tensor:
    """Orthogonalise every matrix of ``g`` (batch, m, n); returns (batch, m, n), a transposed view when m > n."""
    a, b, c = coefficients
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(iters):
        gram = torch.bmm(x, x.mT)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
        del gram, poly
    return x.mT if tall else x
