"""JAX versions of ``kernels.torch.roots`` (same math, same fallbacks; jit-compiled, batched over leading dims).

- ``safe_eigh``: eigh in the input dtype; when the result is not finite, again in float64 (under
  ``jax.enable_x64``); None when both fail.
- ``symmetric_power``: (S + εI)^a = V diag((max(λ, 0) + ε)^a) Vᵀ, ``previous`` (or I) when eigh fails.
- ``inverse_root_newton``: the coupled Newton iteration for (S + εI)^(−1/p) (Guo & Higham 2006; Anil et al.
  2020): M₀ = zA, X₀ = z^(1/p) I, z = (1+p)/(2‖A‖_F); T = ((p+1)I − M)/p, X ← X T, M ← T^p M until
  max|M − I| < tol, as a ``lax.while_loop``; ``previous`` (or I) when it diverges or does not converge.

The finiteness checks read one flag back to the host (as the torch kernels do); the retry cannot live inside
jit because float64 must be switched on around it.
"""

from __future__ import annotations

from functools import partial

from .support import require_jax

jax, jnp = require_jax()


@jax.jit
def _eigh(mats):
    w, v = jnp.linalg.eigh(mats)
    return w, v, jnp.isfinite(w).all() & jnp.isfinite(v).all()


def safe_eigh(mats):
    """Eigenvalues (ascending) and eigenvectors of symmetric ``mats`` (..., d, d) in ``mats.dtype``, or None."""
    w, v, ok = _eigh(mats)
    if bool(ok):
        return w, v
    if mats.dtype != jnp.float64:
        with jax.enable_x64(True):
            w, v, ok = _eigh(jnp.asarray(mats, dtype=jnp.float64))
            if bool(ok):
                return w.astype(mats.dtype), v.astype(mats.dtype)
    return None


def regularize(w, eps: float, mode: str = "absolute"):
    """As ``kernels.torch.roots.regularize``: absolute max(λ,0)+ε, relative max(λ,0)+ε·λ_max (ε when
    λ_max ≤ 0), shift λ − min(λ_min, 0) + ε."""
    if mode == "absolute":
        return jnp.maximum(w, 0) + eps
    if mode == "relative":
        top = jnp.max(w, axis=-1, keepdims=True)
        return jnp.maximum(w, 0) + eps * jnp.where(top > 0, top, 1)
    if mode == "shift":
        return w - jnp.minimum(jnp.min(w, axis=-1, keepdims=True), 0) + eps
    raise ValueError(f"unknown epsilon_mode {mode!r}; use absolute, relative or shift")


@partial(jax.jit, static_argnames=("exponent", "eps", "mode"))
def _power_from(w, v, exponent: float, eps: float, mode: str = "absolute"):
    scale = regularize(w, eps, mode) ** exponent
    return (v * scale[..., None, :]) @ jnp.swapaxes(v, -1, -2)


def _identity_like(mats):
    return jnp.broadcast_to(jnp.eye(mats.shape[-1], dtype=mats.dtype), mats.shape)


def symmetric_power(mats, exponent: float, eps: float, previous=None, mode: str = "absolute"):
    """(S + εI)^exponent of symmetric PSD ``mats`` by eigh (eigenvalues ``regularize``d); see the module doc."""
    dec = safe_eigh(mats)
    if dec is None:
        return previous if previous is not None else _identity_like(mats)
    return _power_from(dec[0], dec[1], float(exponent), float(eps), mode)


@partial(jax.jit, static_argnames=("p", "eps", "max_iters", "tol", "mode"))
def _newton(mats, p: int, eps: float, max_iters: int, tol: float, mode: str = "absolute"):
    dt = jnp.promote_types(mats.dtype, jnp.float32)
    d = mats.shape[-1]
    eye = jnp.eye(d, dtype=dt)
    a = mats.astype(dt)
    if mode == "relative":  # as torch: ε·‖S‖_F
        a = a + (eps * jnp.sqrt(jnp.sum(a * a, axis=(-2, -1))))[..., None, None] * eye
    else:
        a = a + eps * eye
    norm = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)))
    z = (1 + p) / (2 * jnp.maximum(norm, jnp.finfo(dt).tiny))
    m = a * z[..., None, None]
    x = eye * (z ** (1.0 / p))[..., None, None]

    def cond(carry):
        i, _, _, err = carry
        return (i < max_iters) & (err >= tol) & jnp.isfinite(err)

    def body(carry):
        i, x, m, _ = carry
        t = ((p + 1) * eye - m) / p
        x = x @ t
        m = jnp.linalg.matrix_power(t, p) @ m
        return i + 1, x, m, jnp.max(jnp.abs(m - eye))

    _, x, _, err = jax.lax.while_loop(cond, body, (0, x, m, jnp.asarray(jnp.finfo(dt).max, dt)))
    return x.astype(mats.dtype), err


def inverse_root_newton(mats, p: int, eps: float, previous=None, max_iters: int = 100, tol: float = 1e-6,
                        mode: str = "absolute"):
    """(S + εI)^(−1/p) of symmetric PSD ``mats`` (..., d, d) by the coupled Newton iteration (module docstring)."""
    x, err = _newton(mats, int(p), float(eps), int(max_iters), float(tol), mode)
    if bool(jnp.isfinite(err)) and float(err) < tol:
        return x
    return previous if previous is not None else _identity_like(mats)
