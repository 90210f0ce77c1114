"""JAX AdamW step (Kingma & Ba 2015; Loshchilov & Hutter 2019), the same operations as ``adam._adamw_foreach``.

    m ← lerp(m, g, 1−β1)  (in m's dtype);   v ← β2 v + (1−β2) g²
    D = m / (1−β1ᵗ) / (√(v / (1−β2ᵗ)) + ε)
(without momentum: D = g / (…), RMSProp with bias correction)

State: ``adam.layout`` (``exp_avg`` in the momentum dtype, ``exp_avg_sq``, ``nonfinite_skips``). Weight decay and
the learning rate are applied by the transformation (p ← p − η(D + λp)).
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods.common import ema_weights
from ...methods.layout import MethodConfig, OptimizerDefaults
from .common import bias_correction, lerp, sanitize

jax, jnp = require_jax()


def step(grad, state: dict, step, cfg: MethodConfig, opts: OptimizerDefaults):
    """(direction, new state) of one AdamW step for one parameter."""
    st = dict(state)
    beta1, beta2 = opts.betas
    grad = sanitize(st, grad, opts)
    v = st["exp_avg_sq"]
    g = grad.astype(v.dtype)
    m = st.get("exp_avg")
    if m is not None:
        # torch lerps a bfloat16 m in float32 (its CPU/GPU "opmath") and rounds once
        m = lerp(m.astype(jnp.float32), g.astype(m.dtype).astype(jnp.float32), 1 - beta1).astype(m.dtype)
        st["exp_avg"] = m
    decay, weight = ema_weights(beta2)
    v = v * decay + weight * (g * g)
    st["exp_avg_sq"] = v
    denom = jnp.sqrt(v) / jnp.sqrt(bias_correction(beta2, step)) + opts.eps
    num = g if m is None else m
    direction = num.astype(denom.dtype) / denom
    if m is not None:
        direction = direction / bias_correction(beta1, step)
    return direction, st
