"""JAX Muon (Jordan et al. 2024), the twin of ``optimizers.torch.muon`` (math, layout and costs:
``methods.muon``): Nesterov momentum of each matrix (its ``matrix_view``: batch × m × n), orthogonalised by
Newton–Schulz iterations (``kernels.jax.newton_schulz``), scaled by ``update_scale(m, n)`` to AdamW's update RMS;
tensors that are not matrices take Adam's direction (``adam``).
"""

from __future__ import annotations

from ...kernels.jax.newton_schulz import newton_schulz
from ...kernels.jax.support import require_jax
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.muon import adam_config, matrix_view, update_scale
from . import adam as jax_adam
from .common import apply_momentum, sanitize

jax, jnp = require_jax()


def step(grad, state, step, cfg: MethodConfig, opts: OptimizerDefaults, param=None):
    """(direction, new state) of one Muon step for one parameter (module docstring)."""
    view = matrix_view(tuple(grad.shape), cfg.batch_dims)
    if view is None:
        return jax_adam.step(grad, state, step, adam_config(cfg), opts)
    st = dict(state)
    batch, m, n = view
    g = sanitize(st, grad, opts).astype(jnp.dtype(opts.state_dtype))
    u = apply_momentum(st, g, opts.muon_momentum, True) if "momentum" in st else g
    o = newton_schulz(u.reshape(batch, m, n), opts.ns_steps).reshape(grad.shape)
    return o * update_scale(m, n), st
