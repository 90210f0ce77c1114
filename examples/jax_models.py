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


#: The mesh ``jax_mlp_sharded`` is laid out for: 4-way data parallel × 2-way tensor parallel.
MESH_AXES = {"data": 4, "model": 2}


def jax_mlp_sharded():
    """The MLP's shapes placed on an abstract data=4 × model=2 mesh (no devices needed): the first kernel split
    by columns over ``model``, the second by rows (Megatron-style), the rest replicated. ``sketchplan plan
    --mesh data=4,model=2`` reads each leaf's partition spec."""
    from jax.sharding import AbstractMesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = AbstractMesh(tuple(MESH_AXES.values()), tuple(MESH_AXES))
    specs = {"Dense_0": {"kernel": P(None, "model"), "bias": P("model")},
             "Dense_1": {"kernel": P("model", None), "bias": P()},
             "Dense_2": {"kernel": P(), "bias": P()}}
    return {"params": {layer: {name: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                          sharding=NamedSharding(mesh, specs[layer][name]))
                               for name, s in leaves.items()}
                       for layer, leaves in jax_mlp()["params"].items()}}
