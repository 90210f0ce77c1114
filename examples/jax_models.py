"""JAX example models for `--model examples.jax_models:NAME`: factories return pytrees of ShapeDtypeStructs."""

import jax
import jax.numpy as jnp


def init_mlp(key, sizes=(64, 256, 256, 10)):
    """Parameters of a pure-JAX MLP: {'params': {'Dense_i': {'kernel', 'bias'}}} (Flax-style names)."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, (m, n)) in enumerate(zip(keys, zip(sizes[:-1], sizes[1:]))):
        params[f"Dense_{i}"] = {"kernel": jax.random.normal(k, (m, n), jnp.float32) / jnp.sqrt(m),
                                "bias": jnp.zeros((n,), jnp.float32)}
    return {"params": params}


def jax_mlp():
    """Shapes of the MLP's parameters without allocating them (jax.eval_shape)."""
    return jax.eval_shape(init_mlp, jax.random.key(0))
