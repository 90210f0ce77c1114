"""JAX version of ``kernels.torch.lowrank`` (docs/algorithms.md, Sketchy; Feinberg et al. 2023): for Ŝ = U diag(σ²) Uᵀ + ρI,
    (Ŝ + εI)^α X = U diag((σ² + ρ + ε)^α − (ρ + ε)^α) Uᵀ X + (ρ + ε)^α X,
without a d × d matrix; when k = d the complement term is exactly zero and dropped (as in torch). Batched:
u (b, d, k), sig2 (b, k), rho (b,), x (b, d, m); jit-compiled.
"""

from __future__ import annotations

from functools import partial

from .support import require_jax

jax, jnp = require_jax()


@partial(jax.jit, static_argnames=("alpha", "eps", "mode"))
def lowrank_root_apply(u, sig2, rho, x, alpha: float, eps: float, mode: str = "absolute"):
    """(U diag(σ²) Uᵀ + (ρ+ε) I)^α X, batched (module docstring); ``mode`` as in torch."""
    if mode == "relative":
        top = jnp.max(sig2, axis=-1) + rho
        ridge = rho + eps * jnp.where(top > 0, top, 1)
    else:
        ridge = rho + eps
    scale = (sig2 + ridge[..., None]) ** alpha
    proj = jnp.swapaxes(u, -1, -2) @ x
    if u.shape[-1] == u.shape[-2]:
        return u @ (scale[..., None] * proj)
    base = ridge ** alpha
    return base[:, None, None] * x + u @ ((scale - base[..., None])[..., None] * proj)
