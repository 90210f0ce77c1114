"""JAX Adafactor (Shazeer & Stern 2018) as torch.optim.Adafactor, the twin of ``optimizers.torch.adafactor``
(math, layout and costs: ``methods.adafactor``). With the relative step α_t = max(ε₂, RMS(W))·min(lr, 1/√t)
and β2,t = 1 − t^(−0.8): factored second moments R ← R + β2,t-weighted row means of G², C likewise for columns,
V = R C / mean(R) (a full V for tensors that are not factored), Û = G/√V clipped to RMS ≤ d, and the direction
D = α_t Û / lr, so that −lr·D is torch's step. The relative step needs the parameter: ``step(..., param=W)``.
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods.adafactor import BETA2_DECAY, CLIP, EPS2, factored
from ...methods.layout import MethodConfig, OptimizerDefaults
from .common import apply_momentum, sanitize

jax, jnp = require_jax()


def step(grad, state, step, cfg: MethodConfig, opts: OptimizerDefaults, param=None):
    """(direction, new state) of one Adafactor step for one parameter (module docstring)."""
    if param is None:
        raise ValueError("adafactor's relative step size needs the params: call update(grads, state, params).")
    st = dict(state)
    dtype = jnp.dtype(opts.state_dtype)
    g = sanitize(st, grad, opts).astype(dtype)
    t = step.astype(jnp.float32)
    eps1 = jnp.finfo(dtype).eps
    w = t**BETA2_DECAY
    rho = jnp.minimum(opts.lr, 1 / jnp.sqrt(t))
    p = param.astype(jnp.float32)
    alpha = jnp.maximum(EPS2, jnp.sqrt(jnp.mean(p * p))) * rho
    if factored(tuple(grad.shape)):
        row = st["row_var"] + w * (jnp.mean(g * g, axis=-1, keepdims=True) - st["row_var"])
        col = st["col_var"] + w * (jnp.mean(g * g, axis=-2, keepdims=True) - st["col_var"])
        st["row_var"], st["col_var"] = row, col
        v = (row @ col) / jnp.maximum(jnp.mean(row, axis=-2, keepdims=True), eps1)
    else:
        v = st["variance"] + w * (g * g - st["variance"])
        st["variance"] = v
    u = jax.lax.rsqrt(jnp.maximum(v, eps1 * eps1)) * g
    denom = jnp.maximum(1.0, jnp.sqrt(jnp.mean(u * u)) / CLIP)
    u = u * (alpha / (denom * opts.lr))
    return apply_momentum(st, u, opts.betas[0], False), st
