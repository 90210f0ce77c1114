"""Muon's Newton–Schulz orthogonalisation in JAX, the twin of ``kernels.torch.newton_schulz`` (catalogue entry
``newton_schulz``; coefficients and ε from ``methods.muon``)."""

from __future__ import annotations

from ...methods.muon import NS_COEFFICIENTS, NS_EPS
from .support import require_jax

jax, jnp = require_jax()


def newton_schulz(g, iters: int, coefficients=NS_COEFFICIENTS, eps: float = NS_EPS):
    """``kernels.torch.newton_schulz`` in JAX: a batch (b, m, n) of matrices orthogonalised."""
    a, b, c = coefficients
    tall = g.shape[-2] > g.shape[-1]
    x = jnp.swapaxes(g, -1, -2) if tall else g
    x = x / (jnp.linalg.norm(x, axis=(-2, -1), keepdims=True) + eps)
    for _ in range(iters):
        gram = x @ jnp.swapaxes(x, -1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return jnp.swapaxes(x, -1, -2) if tall else x
