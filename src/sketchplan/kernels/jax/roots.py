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


@partial(jax.jit, static_argnames=("exponent", "eps"))
def _power_from(w, v, exponent: float, eps: float):
    scale = (jnp.maximum(w, 0) + eps) ** exponent
    return (v * scale[..., None, :]) @ jnp.swapaxes(v, -1, -2)


def _identity_like(mats):
    return jnp.broadcast_to(jnp.eye(mats.shape[-1], dtype=mats.dtype), mats.shape)


def symmetric_power(mats, exponent: float, eps: float, previous=None):
    """(S + εI)^exponent of symmetric PSD ``mats`` by eigh (eigenvalues clamped at 0); see the module doc."""
    dec = safe_eigh(mats)
    if dec is None:
        return previous if previous is not None else _identity_like(mats)
    return _power_from(dec[0], dec[1], float(exponent), float(eps))


@partial(jax.jit, static_argnames=("p", "eps", "max_iters", "tol"))
def _newton(mats, p: int, eps: float, max_iters: int, tol: float):
    dt = jnp.promote_types(mats.dtype, jnp.float32)
    d = mats.shape[-1]
    eye = jnp.eye(d, dtype=dt)
    a = mats.astype(dt) + eps * eye
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


def inverse_root_newton(mats, p: int, eps: float, previous=None, max_iters: int = 100, tol: float = 1e-6):
    """(S + εI)^(−1/p) of symmetric PSD ``mats`` (..., d, d) by the coupled Newton iteration (module docstring)."""
    x, err = _newton(mats, int(p), float(eps), int(max_iters), float(tol))
    if bool(jnp.isfinite(err)) and float(err) < tol:
        return x
    return previous if previous is not None else _identity_like(mats)
