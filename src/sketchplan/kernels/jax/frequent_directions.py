"""JAX version of ``kernels.torch.frequent_directions``: one Frequent-Directions update (Liberty 2013; Ghashami et
al. 2016; docs/algorithms.md, Frequent Directions), batched over a leading block dimension, in the four interchangeable variants.

Y = [√β2 · U diag(σ), X] (d × (k+N)); s², u = squared singular values (descending) and left singular vectors
of Y; c = s²_{k+1} (0 when Y has ≤ k of them); σ² ← s²_{1..k} − c; U ← u[:, :k]; ρ ← β2 ρ + c.

Variants of the spectrum step (same sketch up to rounding): ``svd`` (thin SVD of Y), ``gram_small`` (eigh of
the (k+N)² Gram YᵀY, u = Y v / s), ``gram_large`` (eigh of the d² Gram β2 U diag(σ²) Uᵀ + X Xᵀ), ``qr_svd``
(QR of Yᵀ, then SVD of the triangular factor), and the approximate ``subspace`` (warm-started subspace iteration
and the compression Ĉ' = Y Π Yᵀ ≼ Y Yᵀ; contract in ``kernels.torch.frequent_directions``, same steps here with
``jax.random`` in place of torch's generator, so the two agree in distribution, not bit for bit). Each variant is one jit-compiled function; non-finite results
are recomputed in float64, and if that fails too the sketch is returned unchanged (as in torch).
"""

from __future__ import annotations

from functools import partial

from ..calls import (FD_VARIANTS, SUBSPACE_ESTIMATE_STEPS, SUBSPACE_POWER_STEPS, choose_variant, subspace_gs_passes,
                     subspace_width)
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
        return _gram_left(y)
    if variant == "qr_svd":
        _, r = jnp.linalg.qr(_mT(y))
        y = _mT(r)
    left, s, _ = jnp.linalg.svd(y, full_matrices=False)
    return s * s, left


def _gram_left(y):
    """Squared singular values (descending) and left singular vectors of y from eigh of yᵀy (torch's twin)."""
    w, v = jnp.linalg.eigh(_mT(y) @ y)
    w, v = jnp.maximum(jnp.flip(w, -1), 0), jnp.flip(v, -1)
    s = jnp.sqrt(w)
    keep = s > s[..., :1] * (y.shape[-1] * jnp.finfo(y.dtype).eps)
    left = (y @ v) / jnp.where(keep, s, 1)[..., None, :]
    return jnp.where(keep, w, 0), left * keep[..., None, :]


def _orthogonal_to(u, p, passes: int = 2):
    """Orthonormal basis of p's columns orthogonal to U's (torch's twin: Gram–Schmidt ``passes`` times, then QR)."""
    for _ in range(passes):
        p = p - u @ (_mT(u) @ p)
    return jnp.linalg.qr(p)[0]


def _subspace_exact(u, sig2, rho, x, beta2: float):
    """The exact path of the ``subspace`` variant (l = k + n; ``kernels.torch.frequent_directions``'s twin)."""
    k = u.shape[-1]
    q = jnp.concatenate([u, _orthogonal_to(u, x)], axis=-1)
    y = jnp.concatenate([u * jnp.sqrt(jnp.maximum(beta2 * sig2, 0))[..., None, :], x], axis=-1)
    b = _mT(q) @ y
    s2, ub = jnp.linalg.eigh(b @ _mT(b))
    s2, ub = jnp.maximum(jnp.flip(s2, -1), 0), jnp.flip(ub, -1)
    c = s2[..., k]
    top = s2[..., :k]
    keep = top > top[..., :1] * (s2.shape[-1] * jnp.finfo(x.dtype).eps)
    new_u = (q @ ub[..., :k]) * keep[..., None, :]
    return new_u, jnp.where(keep, top - c[..., None], 0), beta2 * rho + c


def _subspace(u, sig2, rho, x, beta2: float):
    """The ``subspace`` variant: new (u, σ², ρ) (``kernels.torch.frequent_directions._subspace_update``)."""
    d, k, n = u.shape[-2], u.shape[-1], x.shape[-1]
    w, l = k + n, subspace_width(d, k, n)
    if l == w:
        return _subspace_exact(u, sig2, rho, x, beta2)
    keys = jax.random.split(jax.random.PRNGKey(20), 3)
    y = jnp.concatenate([u * jnp.sqrt(jnp.maximum(beta2 * sig2, 0))[..., None, :], x], axis=-1)

    def warm(_):
        first, *later = subspace_gs_passes()
        p = _orthogonal_to(u, x @ jax.random.normal(keys[0], (n, l - k)).astype(y.dtype), first)
        for passes in later:
            p = _orthogonal_to(u, x @ (_mT(x) @ p), passes)
        return jnp.concatenate([u, p], axis=-1)

    def cold(_):
        q, _ = jnp.linalg.qr(y @ jax.random.normal(keys[1], (w, l)).astype(y.dtype))
        for _ in range(SUBSPACE_POWER_STEPS):
            q, _ = jnp.linalg.qr(y @ (_mT(y) @ q))
        return q

    if l > k:
        q = jax.lax.cond(jnp.all(sig2[..., -1] > 0), warm, cold, None)
    else:
        q = cold(None)
    b = _mT(q) @ y
    s2, ub = jnp.linalg.eigh(b @ _mT(b))
    s2, ub = jnp.maximum(jnp.flip(s2, -1), 0), jnp.flip(ub, -1)[..., :k]
    c = s2[..., k] if l > k else jnp.zeros_like(rho)
    top = s2[..., :k]
    keep = top > top[..., :1] * (w * jnp.finfo(y.dtype).eps)
    coef = jnp.where(keep, jnp.sqrt(jnp.maximum(top - c[..., None], 0)) / jnp.where(keep, top, 1), 0)
    z = y @ (_mT(b) @ (ub * coef[..., None, :]))
    v = jnp.broadcast_to(jax.random.normal(keys[2], (d, 1)).astype(y.dtype), z.shape[:-2] + (d, 1))

    def residual(v):
        return y @ (_mT(y) @ v) - z @ (_mT(z) @ v)

    left_out = c
    if l < d:  # l = d: the basis spans R^d, the update is exact
        for _ in range(SUBSPACE_ESTIMATE_STEPS):
            r = residual(v)
            v = r / jnp.maximum(jnp.linalg.norm(r, axis=-2, keepdims=True), jnp.finfo(y.dtype).tiny)
        left_out = jnp.maximum(jnp.sum(v * residual(v), axis=(-2, -1)), c)
    new_sig2, new_u = _gram_left(z)
    return new_u, new_sig2, beta2 * rho + left_out


@partial(jax.jit, static_argnames=("beta2", "variant"))
def _update(u, sig2, rho, x, beta2: float, variant: str):
    k = u.shape[-1]
    if variant == "subspace":
        new_u, new_sig2, new_rho = _subspace(u, sig2, rho, x, beta2)
        ok = jnp.isfinite(new_u).all() & jnp.isfinite(new_sig2).all() & jnp.isfinite(new_rho).all()
        return new_u, new_sig2, new_rho, ok
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
