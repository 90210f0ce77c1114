"""jit-traceable forms of the JAX kernels, for use inside optax transformations (``optimizers.jax``).

``roots.symmetric_power``, ``roots.inverse_root_newton`` and ``frequent_directions.fd_update`` read a
success flag back to the host and, on failure, retry in float64 — impossible inside ``jax.jit`` (a traced value
has no ``bool``, and x64 cannot be switched on inside a trace). The functions below call the same compiled cores
(``_eigh`` + ``_power_from``, ``_newton``, ``_update``: no formula is restated) and replace the host-side
fallback by a select on the device:

- ``symmetric_power``: (S + εI)^a = V diag((max(λ, 0) + ε)^a) Vᵀ when eigh's result is finite, else
  ``previous`` (or I);
- ``inverse_root_newton``: the coupled-Newton root when the iteration converged below ``tol``, else
  ``previous`` (or I);
- ``fd_update``: the new Frequent-Directions sketch when finite, else the sketch unchanged.

The one difference from the host-side kernels: no float64 retry (a failed float32 eigh/SVD keeps the previous
root or sketch, which is what the torch kernels do when float64 fails too).
"""

from __future__ import annotations

import math

from ..calls import FD_VARIANTS, choose_variant
from .frequent_directions import _update
from .roots import _eigh, _identity_like, _newton, _power_from
from .support import require_jax

jax, jnp = require_jax()


def _one_matrix_at_a_time(batch: int) -> bool:
    """Whether to decompose a batch of ``batch`` matrices one by one (``lax.map``): on CPU with several devices.
    jaxlib's batched CPU LAPACK kernels (``lapack_ssyevd_ffi``, SVD, QR → ``ParallelBatchMap``) queue a batch of
    more than one chunk on the intra-op pool and wait for it; when every pool thread is one device's shard doing
    that, none is left to run the batch — a 0%-CPU stall in ``block_until_ready`` (issue 22;
    benchmarks/results/jax_eigh_stall_backtrace.txt). One matrix is one chunk, run inline."""
    return batch > 1 and jax.default_backend() == "cpu" and jax.device_count() > 1


def eigh(mats):
    """(eigenvalues, eigenvectors, all finite) of symmetric ``mats`` (..., d, d): ``roots._eigh``, one matrix at
    a time where ``_one_matrix_at_a_time`` says so."""
    if mats.ndim < 3 or not _one_matrix_at_a_time(math.prod(mats.shape[:-2])):
        return _eigh(mats)
    flat = mats.reshape((-1,) + mats.shape[-2:])
    w, v = jax.lax.map(jnp.linalg.eigh, flat)
    w, v = w.reshape(mats.shape[:-1]), v.reshape(mats.shape)
    return w, v, jnp.isfinite(w).all() & jnp.isfinite(v).all()


def qr_q(mats):
    """The orthonormal factor Q of ``mats`` (..., m, n) = QR, one matrix at a time where ``_one_matrix_at_a_time``
    says so (jaxlib's batched CPU QR goes through the same ``ParallelBatchMap``)."""
    if mats.ndim < 3 or not _one_matrix_at_a_time(math.prod(mats.shape[:-2])):
        return jnp.linalg.qr(mats)[0]
    flat = mats.reshape((-1,) + mats.shape[-2:])
    q = jax.lax.map(lambda m: jnp.linalg.qr(m)[0], flat)
    return q.reshape(mats.shape[:-2] + q.shape[-2:])


def symmetric_power(mats, exponent: float, eps: float, previous=None, mode: str = "absolute"):
    """(S + εI)^exponent of symmetric PSD ``mats`` (..., d, d) by eigh, traceable; ``previous`` on failure."""
    w, v, ok = eigh(mats)
    fallback = previous if previous is not None else _identity_like(mats)
    return jnp.where(ok, _power_from(w, v, float(exponent), float(eps), mode), fallback)


def inverse_root_newton(mats, p: int, eps: float, previous=None, max_iters: int = 100, tol: float = 1e-6,
                        mode: str = "absolute"):
    """(S + εI)^(−1/p) by the coupled Newton iteration, traceable; ``previous`` when it does not converge."""
    x, err = _newton(mats, int(p), float(eps), int(max_iters), float(tol), mode)
    fallback = previous if previous is not None else _identity_like(mats)
    return jnp.where(jnp.isfinite(err) & (err < tol), x, fallback)


def fd_update(u, sig2, rho, x, beta2: float, variant: str = "auto"):
    """One batched FD step (u (b, d, k), sig2 (b, k), rho (b,), x (b, d, N)), traceable; unchanged on failure."""
    if variant == "auto":
        variant = choose_variant(u.shape[-2], u.shape[-1], x.shape[-1])
    if variant not in FD_VARIANTS:
        raise ValueError(f"unknown FD variant {variant!r}; use one of {', '.join(FD_VARIANTS)} or auto")
    if _one_matrix_at_a_time(u.shape[0]):
        def one(args):
            nu, ns, nr, ok = _update(*(a[None] for a in args), float(beta2), variant)
            return nu[0], ns[0], nr[0], jnp.asarray(ok).all()

        nu, ns, nr, oks = jax.lax.map(one, (u, sig2, rho, x))
        ok = oks.all()  # as the batched call: the whole batch keeps its old sketch when any block fails
    else:
        nu, ns, nr, ok = _update(u, sig2, rho, x, float(beta2), variant)
    return jnp.where(ok, nu, u), jnp.where(ok, ns, sig2), jnp.where(ok, nr, rho)
