"""Shared by the torch-vs-optax parity tests: the same gradient stream through a torch optimizer (float64
parameters, so its Δp is its float32 update exactly) and a jitted optax transformation."""

from __future__ import annotations

import numpy as np
import torch


def worst_update_error(opt, tparams: dict, tx, rng, steps: int, from_step: int) -> float:
    """Largest relative error ‖Δp_torch − update_optax‖ / ‖Δp_torch‖ over every tensor and step ≥ ``from_step``
    of ``steps`` steps; ``tparams`` (name → float64 torch parameter) are what ``opt`` steps, and the optax side
    starts from the same values in float32. Gradients: float32 normals from ``rng``, scaled by 1 + ½ sin t."""
    import jax
    import jax.numpy as jnp

    params = {k: jnp.asarray(p.detach().numpy().astype(np.float32)) for k, p in tparams.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    worst = 0.0
    for t in range(1, steps + 1):
        grads = {k: np.asarray(rng.standard_normal(p.shape) * (1 + 0.5 * np.sin(t)), np.float32)
                 for k, p in tparams.items()}
        before = {k: p.detach().clone() for k, p in tparams.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k], dtype=torch.float64)
        opt.step()
        updates, state = update({k: jnp.asarray(v) for k, v in grads.items()}, state, params)
        params = jax.tree.map(lambda a, b: a + b, params, updates)
        if t >= from_step:
            for k in tparams:
                ref = (tparams[k].detach() - before[k]).numpy()
                err = np.linalg.norm(ref - np.asarray(updates[k], np.float64)) / np.linalg.norm(ref)
                worst = max(worst, float(err))
    return worst
