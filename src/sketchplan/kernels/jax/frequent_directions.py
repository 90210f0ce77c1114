"""JAX version of ``kernels.torch.frequent_directions``: one Frequent-Directions update (Liberty 2013; Ghashami et
al. 2016; ALGORITHMS.md §3), batched over a leading block dimension, in the four interchangeable variants.

Y = [√β2 · U diag(σ), X] (d × (k+N)); s², u = squared singular values (descending) and left singular vectors
of Y; c = s²_{k+1} (0 when Y has ≤ k of them); σ² ← s²_{1..k} − c; U ← u[:, :k]; ρ ← β2 ρ + c.

Variants of the spectrum step (same sketch up to rounding): ``svd`` (thin SVD of Y), ``gram_small`` (eigh of
the (k+N)² Gram YᵀY, u = Y v / s), ``gram_large`` (eigh of the d² Gram β2 U diag(σ²) Uᵀ + X Xᵀ), ``qr_svd``
(QR of Yᵀ, then SVD of the triangular factor). Each variant is one jit-compiled function; non-finite results
are recomputed in float64, and if that fails too the sketch is returned unchanged (as in torch).
"""

from __future__ import annotations

from functools import partial

from ..calls import FD_VARIANTS, choose_variant
from .support import require_jax

jax, jnp = require_jax()


def _mT(a):
    return jnp.swapaxes(a, -1, -2)


def _left_spectrum(u, sig2, x, beta2: float, variant: str):
    if variant == "gram_large":
        gram = (u * (beta2 * sig2)[..., None, :]) @ _mT(u) + x @ _mT(x)
        w, v = jnp.linalg.eigh(gram)
        return jnp.maximum(jnp.flip(w, -1), 0), jnp.flip(v, -1)
    y = jnp.concatenate([u * jnp.sqrt(jnp.maximum(beta2 * sig2, 0))[..., None, :], x], axis=-1)
    if variant == "gram_small":
        w, v = jnp.linalg.eigh(_mT(y) @ y)
        w, v = jnp.maximum(jnp.flip(w, -1), 0), jnp.flip(v, -1)
        s = jnp.sqrt(w)
        keep = s > s[..., :1] * (y.shape[-1] * jnp.finfo(y.dtype).eps)
        left = (y @ v) / jnp.where(keep, s, 1)[..., None, :]
        return jnp.where(keep, w, 0), left * keep[..., None, :]
    if variant == "qr_svd":
        _, r = jnp.linalg.qr(_mT(y))
        y = _mT(r)
    left, s, _ = jnp.linalg.svd(y, full_matrices=False)
    return s * s, left


@partial(jax.jit, static_argnames=("beta2", "variant"))
def _update(u, sig2, rho, x, beta2: float, variant: str):
    k = u.shape[-1]
    w, left = _left_spectrum(u, sig2, x, beta2, variant)
    c = w[..., k] if w.shape[-1] > k else jnp.zeros_like(rho)
    new_sig2 = jnp.maximum(w[..., :k] - c[..., None], 0)
    new_u = left[..., :, :k]
    ok = jnp.isfinite(new_u).all() & jnp.isfinite(new_sig2).all()
    return new_u, new_sig2, beta2 * rho + c, ok


def fd_update(u, sig2, rho, x, beta2: float, variant: str = "auto"):
    """One FD step, batched: u (b, d, k), sig2 (b, k), rho (b,), x (b, d, N) → new (u, sig2, rho)."""
    d, k = u.shape[-2], u.shape[-1]
    if variant == "auto":
        variant = choose_variant(d, k, x.shape[-1])
    if variant not in FD_VARIANTS:
        raise ValueError(f"unknown FD variant {variant!r}; use one of {', '.join(FD_VARIANTS)} or auto")
    nu, ns, nr, ok = _update(u, sig2, rho, x, float(beta2), variant)
    if bool(ok):
        return nu, ns, nr
    if u.dtype != jnp.float64:
        with jax.enable_x64(True):
            f64 = [jnp.asarray(a, dtype=jnp.float64) for a in (u, sig2, rho, x)]
            nu, ns, nr, ok = _update(*f64, float(beta2), variant)
            if bool(ok):
                return nu.astype(u.dtype), ns.astype(u.dtype), nr.astype(u.dtype)
    return u, sig2, rho
