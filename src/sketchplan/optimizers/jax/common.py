"""JAX versions of the step pieces every method shares (``optimizers.torch.common`` and ``optimizers.torch.base.sanitize``).

Each function reads the per-tensor state dict ``st`` (layout names → arrays) and writes the new arrays back into
it (``st`` is a fresh dict per step, so nothing outside the step is mutated):

- ``sanitize``: a gradient holding NaN or Inf is replaced by zeros and counted in ``nonfinite_skips``
  (its statistics then only decay; no host synchronisation, hence no warning under jit);
- ``graft_direction``: the graft's direction A (adam, rmsprop, adafactor of Shazeer & Stern 2018, or sgd;
  Agarwal et al. 2020 grafting);
- ``apply_momentum``: EMA momentum m ← β1 m + (1−β1) D in the buffer's dtype, optionally Nesterov;
- ``bias_correction``: Adam's 1 − βᵗ, computed as −expm1(t·log β) so that float32 keeps its digits at small t
  (torch computes it in Python double; the naive float32 1 − βᵗ would lose 1e-4 relative at t = 1, β = 0.999).

The decay/weight pair of a second-moment update is ``common.ema_weights`` (shared with torch).
"""

from __future__ import annotations

import math

from ...kernels.jax.support import require_jax
from ...methods.common import GRAD_SQNORM_LIMIT, ema_weights
from ...methods.layout import OptimizerDefaults

jax, jnp = require_jax()


def bias_correction(beta: float, step):
    """1 − βᵗ for a traced step t (1 when β = 1, a running sum); see the module docstring."""
    if beta >= 1:
        return jnp.float32(1.0)
    return -jnp.expm1(step.astype(jnp.float32) * jnp.float32(math.log(beta)))


def lerp(start, end, weight: float):
    """torch.lerp's formula: start + w (end − start) for w < 0.5, else end − (end − start)(1 − w)."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def sanitize(st: dict, grad, opts: OptimizerDefaults):
    """``grad`` with a non-finite tensor replaced by zeros; such a tensor adds 1 to ``nonfinite_skips``.

    As in torch, the float32 squared norm finds it: NaN, ±Inf, or ‖g‖² above ``GRAD_SQNORM_LIMIT`` (a finite
    gradient whose squares would overflow the state). ``opts.nonfinite_guard = False``: ``grad`` as it is;
    ``auto`` is resolved over the whole parameter tree before (``transform.scale_by_assignment``; a step called on
    its own with ``auto`` runs the guard)."""
    if not opts.nonfinite_guard:
        return grad
    flat = grad.reshape(-1).astype(jnp.float32)
    bad = ~(jnp.vdot(flat, flat) <= GRAD_SQNORM_LIMIT)
    st["nonfinite_skips"] = st["nonfinite_skips"] + bad.astype(jnp.int32)
    return jnp.where(bad, jnp.zeros_like(grad), grad)


def _scaled(g, v, correction, eps: float):
    return g / (jnp.sqrt(v / correction) + eps)


def graft_direction(st: dict, g, graft: str, opts: OptimizerDefaults, step):
    """Update the graft's state with ``g`` (state dtype) and return its direction A (param-shaped).

    adam: v ← decay·v + w·g², A = g / (√(v / (1−β2ᵗ)) + ε); rmsprop: the same without bias correction;
    adafactor: row and column sums r, c of g² (merged tensor as a matrix), v̂ = r cᵀ / Σr, A = g / (√v̂ + ε);
    sgd: A = g.
    """
    if graft in ("sgd", "none"):
        return g
    decay, w = ema_weights(opts.betas[1])
    corr = bias_correction(opts.betas[1], step) if graft != "rmsprop" else 1.0
    key = "graft_exp_avg_sq" if "graft_exp_avg_sq" in st else "graft_v" if "graft_v" in st else None
    if key is not None:
        v = st[key]
        flat = g.reshape(v.shape)
        v = v * decay + w * (flat * flat)
        st[key] = v
        return _scaled(flat, v, corr, opts.eps).reshape(g.shape)
    r, c = st["graft_row"], st["graft_col"]
    g2 = jnp.square(g.reshape(r.shape[0], c.shape[0]))
    r = r * decay + w * g2.sum(1)
    c = c * decay + w * g2.sum(0)
    st["graft_row"], st["graft_col"] = r, c
    vhat = jnp.outer(r, c) / jnp.maximum(r.sum(), jnp.finfo(r.dtype).tiny)
    return _scaled(g.reshape(vhat.shape), vhat, corr, opts.eps).reshape(g.shape)


def apply_momentum(st: dict, d, beta1: float, nesterov: bool):
    """EMA momentum in the buffer's own dtype (computed in D's dtype); returns m, or β1 m + (1−β1) D with
    Nesterov; D itself without a momentum buffer (as ``common.apply_momentum``)."""
    m = st.get("momentum")
    if m is None:
        return d
    mf = lerp(m.astype(d.dtype), d, 1 - beta1)
    st["momentum"] = mf.astype(m.dtype)
    return lerp(d, mf, beta1) if nesterov else mf
