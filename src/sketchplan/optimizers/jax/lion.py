"""JAX Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), the twin of
``optimizers.torch.lion`` (math, layout and costs: ``methods.lion``):

    D = lion_lr_ratio · sign(lerp(m, g, 1−β1)),   m ← lerp(m, g, 1−β2)
(without momentum: D = lion_lr_ratio · sign(g)). The transformation chains −η(D + λW) on.
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods.layout import MethodConfig, OptimizerDefaults
from .common import lerp, sanitize

jax, jnp = require_jax()


def step(grad, state, step, cfg: MethodConfig, opts: OptimizerDefaults, param=None):
    """(direction, new state) of one Lion step for one parameter (module docstring)."""
    st = dict(state)
    beta1, beta2 = opts.lion_betas
    g = sanitize(st, grad, opts).astype(jnp.dtype(opts.state_dtype))
    m = st.get("momentum")
    if m is None:
        d = jnp.sign(g)
    else:
        mf = m.astype(g.dtype)
        d = jnp.sign(lerp(mf, g, 1 - beta1))
        st["momentum"] = lerp(mf, g, 1 - beta2).astype(m.dtype)
    return d * opts.lion_lr_ratio, st
