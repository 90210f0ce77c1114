"""Placing optimizer state on a device mesh by ``methods.mesh_placement``'s rule (the rule and its byte counts are
framework-free; this module only applies it with JAX's sharding API).

The mesh is the one set by ``jax.set_mesh`` (explicit or automatic axes), else the mesh of a parameter that is
a concrete array with a ``NamedSharding`` (``jax.device_put(params, NamedSharding(mesh, spec))``, then an eager
``tx.init``), else there is none and nothing is placed:

- explicit axes: ``jax.sharding.reshard``; the per-tensor step itself runs under ``jax.sharding.auto_axes``
  (eigh, SVD and the stacked-block reshapes have no explicit-sharding rule) and its outputs come back with the
  rule's specs (``step_out_specs``);
- automatic axes: ``jax.lax.with_sharding_constraint`` (an eager one for a concrete mesh: ``jax.device_put``).
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods.mesh_placement import Spec

jax, jnp = require_jax()

from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def context_mesh(leaves=()):
    """The mesh state is placed on (module docstring), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        return mesh
    for p in leaves:
        if isinstance(p, jax.Array) and not _is_tracer(p) and isinstance(p.sharding, NamedSharding):
            return p.sharding.mesh
    return None


def mesh_axes(mesh) -> dict[str, int]:
    """Axis name → size, in mesh order (``methods.mesh_placement``'s mesh)."""
    return dict(mesh.shape)


def is_explicit(mesh) -> bool:
    """Whether ``mesh`` is a ``jax.set_mesh`` mesh with explicit axes."""
    return mesh is not None and not isinstance(mesh, jax.sharding.Mesh) and any(
        t == AxisType.Explicit for t in mesh.axis_types)


def place(x, spec: Spec, mesh):
    """``x`` laid out as ``spec`` on ``mesh`` (module docstring); ``x`` itself without a mesh."""
    if mesh is None:
        return x
    ps = PartitionSpec(*spec)
    if isinstance(mesh, jax.sharding.Mesh):  # a concrete mesh found on the parameters, no jax.set_mesh
        sharding = NamedSharding(mesh, ps)
        return jax.lax.with_sharding_constraint(x, sharding) if _is_tracer(x) else jax.device_put(x, sharding)
    if is_explicit(mesh):
        return jax.sharding.reshard(x, ps)
    return jax.lax.with_sharding_constraint(x, ps)


def spec_of(x) -> Spec:
    """The partition spec of an explicitly sharded array or tracer (``()`` when it has none)."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    return tuple(spec) if spec is not None else ()


def pspec(spec: Spec) -> PartitionSpec:
    return PartitionSpec(*spec)


def run_in_auto_axes(fn, out_shardings, *args):
    """``fn(*args)`` with the explicit mesh axes made automatic inside, results laid out as ``out_shardings`` (a
    pytree of ``PartitionSpec`` matching the results)."""
    return jax.sharding.auto_axes(fn, out_sharding=out_shardings)(*args)


def specs_by_name(specs) -> dict[str, Spec]:
    """Parameter name → spec tuple from a tree of ``PartitionSpec`` (or of arrays with a ``NamedSharding``)
    shaped like the parameters, for ``planner.mesh.device_state_bytes``."""
    from ...pytree import key_path_name

    def spec_tuple(x):
        if isinstance(x, PartitionSpec):
            return tuple(x)
        sharding = getattr(x, "sharding", None)
        return tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()

    leaves = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
    return {key_path_name(path): spec_tuple(x) for path, x in leaves}


def measured_device_bytes(tree, mesh) -> list[int]:
    """Bytes each device of ``mesh`` holds of the arrays of ``tree`` (their ``addressable_shards``), in the
    mesh's row-major device order (``planner.mesh.device_state_bytes``'s order)."""
    position = {d.id: i for i, d in enumerate(mesh.devices.flat)}
    out = [0] * len(position)
    for leaf in jax.tree.leaves(tree):
        for s in leaf.addressable_shards:
            out[position[s.device.id]] += s.data.nbytes
    return out
