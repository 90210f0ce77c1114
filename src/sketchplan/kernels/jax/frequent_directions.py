"""JAX version of ``kernels.torch.frequent_directions``: one Frequent-Directions update (Liberty 2013; Ghashami et
al. 2016; docs/algorithms.md, Frequent Directions), batched over a leading block dimension, in the four interchangeable variants.

Y = [√β2 · U diag(σ), X] (d × (k+N)); s², u = squared singular values (descending) and left singular vectors
of Y; c = s²_{k+1} (0 when Y has ≤ k of them); σ² ← s²_{1..k} − c; U ← u[:, :k]; ρ ← β2 ρ + c.

Variants of the spectrum step (same sketch up to rounding): ``svd`` (thin SVD of Y), ``gram_small`` (eigh of
the (k+N)² Gram YᵀY, u = Y v / s), ``gram_large`` (eigh of the d² Gram β2 U diag(σ²) Uᵀ + X Xᵀ), ``qr_svd``
(QR of Yᵀ, then SVD of the triangular factor), and the approximate ``subspace`` (warm-started subspace iteration
and the compression Ĉ' = Y Π Yᵀ ≼ Y Yᵀ with a Krylov estimate of what it leaves out; contract in
``kernels.torch.frequent_directions``, same steps here (Y never formed, as in torch) with
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


def _warm_ritz(u, p, sig2, x, beta2: float):
    """Rayleigh–Ritz on Q = [U, P], P ⟂ U: QᵀX and the descending pairs of diag(β2 σ², 0) + (QᵀX)(QᵀX)ᵀ (torch's
    twin)."""
    k = u.shape[-1]
    bx = jnp.concatenate([_mT(u) @ x, _mT(p) @ x], axis=-2)
    bb = bx @ _mT(bx)
    bb = bb + jnp.zeros_like(bb).at[..., jnp.arange(k), jnp.arange(k)].set(jnp.maximum(beta2 * sig2, 0))
    s2, ub = jnp.linalg.eigh(bb)
    return bx, jnp.maximum(jnp.flip(s2, -1), 0), jnp.flip(ub, -1)


def _outside(u, x):
    """Orthonormal basis of X's part outside span(U), rounding-level columns zeroed (torch's ``_outside``)."""
    r = x
    for _ in range(2):
        r = r - u @ (_mT(u) @ r)
    q, rr = jnp.linalg.qr(r)
    tol = jnp.linalg.norm(x, axis=-2) * (max(x.shape[-2], x.shape[-1]) * jnp.finfo(x.dtype).eps)
    keep = jnp.abs(jnp.diagonal(rr, axis1=-2, axis2=-1)) > tol
    q = q - u @ (_mT(u) @ q)
    return q * jnp.where(keep, 1 / jnp.linalg.norm(q, axis=-2), 0)[..., None, :]


def _subspace_exact(u, sig2, rho, x, beta2: float):
    """The exact path of the ``subspace`` variant (l = k + n; ``kernels.torch.frequent_directions``'s twin)."""
    k = u.shape[-1]
    p = _outside(u, x)
    _, s2, ub = _warm_ritz(u, p, sig2, x, beta2)
    c = s2[..., k]
    top = s2[..., :k]
    keep = top > top[..., :1] * (s2.shape[-1] * jnp.finfo(x.dtype).eps)
    new_u = (u @ ub[..., :k, :k] + p @ ub[..., k:, :k]) * keep[..., None, :]
    return new_u, jnp.where(keep, top - c[..., None], 0), beta2 * rho + c


def _largest_eigenvalue(rows, v, steps: int):
    """torch's ``_largest_eigenvalue``: the largest Ritz value of M ≽ 0 (given as row products) on the Krylov space
    of dimension ``steps`` from v (Lanczos with full reorthogonalisation)."""
    tiny = jnp.finfo(v.dtype).tiny
    basis = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), tiny)
    images = rows(basis)
    for _ in range(steps - 1):
        r = images[..., -1:, :]
        for _ in range(2):
            r = r - (r @ _mT(basis)) @ basis
            r = r / jnp.maximum(jnp.linalg.norm(r, axis=-1, keepdims=True), tiny)
        basis = jnp.concatenate([basis, r], axis=-2)
        images = jnp.concatenate([images, rows(r)], axis=-2)
    t = images @ _mT(basis)
    return jnp.linalg.eigvalsh((t + _mT(t)) / 2)[..., -1]


def _subspace(u, sig2, rho, x, beta2: float):
    """The ``subspace`` variant for k < l < min(d, k + n): new (u, σ², ρ)
    (``kernels.torch.frequent_directions._subspace_update``). As there, Y = [A, X] (A = √β2 · U diag(σ)) is never
    formed: every product with Y is split into its A and X parts. XLA does not fuse a concatenation into the matrix
    products that read it: forming Y made the compiled update's temporaries 1.5-3.5× what they are now (XLA's
    ``memory_analysis``, CPU, float32: 20.8 → 11.3 MB for three 768 × 256 sketches and n = 1024, 12.2 → 3.5 MB
    for four 768 × 64 and n = 768), at the same speed (0.91-1.05× median)."""
    d, k, n = u.shape[-2], u.shape[-1], x.shape[-1]
    w, l = k + n, subspace_width(d, k, n)
    keys = jax.random.split(jax.random.PRNGKey(20), 3)
    d2 = jnp.maximum(beta2 * sig2, 0)
    a = u * jnp.sqrt(d2)[..., None, :]

    def warm(_):
        first, *later = subspace_gs_passes()
        p = _orthogonal_to(u, x @ jax.random.normal(keys[0], (n, l - k)).astype(x.dtype), first)
        for passes in later:
            p = _orthogonal_to(u, x @ (_mT(x) @ p), passes)
        bx, s2, ub = _warm_ritz(u, p, sig2, x, beta2)
        ba = jnp.zeros(bx.shape[:-2] + (l, k), x.dtype).at[..., jnp.arange(k), jnp.arange(k)].set(jnp.sqrt(d2))
        return ba, bx, s2, ub                              # QᵀA = [diag(√β2 σ); 0] on Q = [U, P]

    def cold(_):
        om = jax.random.normal(keys[1], (w, l)).astype(x.dtype)
        q, _ = jnp.linalg.qr(a @ om[:k] + x @ om[k:])     # Y Ω
        for _ in range(SUBSPACE_POWER_STEPS):
            q, _ = jnp.linalg.qr(a @ (_mT(a) @ q) + x @ (_mT(x) @ q))
        ba, bx = _mT(q) @ a, _mT(q) @ x                  # B = QᵀY = [QᵀA, QᵀX]
        s2, ub = jnp.linalg.eigh(bx @ _mT(bx) + ba @ _mT(ba))
        return ba, bx, jnp.maximum(jnp.flip(s2, -1), 0), jnp.flip(ub, -1)

    ba, bx, s2, ub = jax.lax.cond(jnp.all(sig2[..., -1] > 0), warm, cold, None)
    ub = ub[..., :k]
    c = s2[..., k]
    top = s2[..., :k]
    keep = top > top[..., :1] * (w * jnp.finfo(x.dtype).eps)
    coef = jnp.where(keep, jnp.sqrt(jnp.maximum(top - c[..., None], 0)) / jnp.where(keep, top, 1), 0)
    m = ub * coef[..., None, :]
    z = a @ (_mT(ba) @ m) + x @ (_mT(bx) @ m)            # Z = Y Bᵀ M, Ĉ' = Z Zᵀ ≼ Y Yᵀ
    v = jnp.broadcast_to(jax.random.normal(keys[2], (1, d)).astype(x.dtype), z.shape[:-2] + (1, d))
    lam = _largest_eigenvalue(lambda r: (r @ a) @ _mT(a) + (r @ x) @ _mT(x) - (r @ z) @ _mT(z), v,
                              SUBSPACE_ESTIMATE_STEPS)     # v (Y Yᵀ − Z Zᵀ)
    new_sig2, new_u = _gram_left(z)
    return new_u, new_sig2, beta2 * rho + jnp.maximum(lam, c)


def _full(u, sig2, rho, x, beta2: float):
    """l = d < k + n: Q = I, the Ritz step is ``gram_large``'s eigh, directions of zero value zeroed (torch's twin)."""
    k, n = u.shape[-1], x.shape[-1]
    w, left = _left_spectrum(u, sig2, x, beta2, "gram_large")
    c = w[..., k] if w.shape[-1] > k else jnp.zeros_like(rho)
    keep = w[..., :k] > w[..., :1] * ((k + n) * jnp.finfo(x.dtype).eps)
    new_sig2 = jnp.where(keep, jnp.maximum(w[..., :k] - c[..., None], 0), 0)
    return left[..., :, :k] * keep[..., None, :], new_sig2, beta2 * rho + c


@partial(jax.jit, static_argnames=("beta2", "variant"))
def _update(u, sig2, rho, x, beta2: float, variant: str):
    k = u.shape[-1]
    if variant == "subspace":
        d, n = u.shape[-2], x.shape[-1]
        l = subspace_width(d, k, n)
        path = _subspace_exact if l == k + n else _full if l == d else _subspace
        new_u, new_sig2, new_rho = path(u, sig2, rho, x, beta2)
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
