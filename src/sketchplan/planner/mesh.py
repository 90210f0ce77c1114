"""Per-device plans for a JAX device mesh (framework-free).

A plan made with ``make_plan(..., mesh=...)`` counts memory per device: the optax transformation built from it
(``build_optax``) places each tensor's state by ``methods.mesh_placement``'s rule — elementwise state split like
its parameter, the stacked blocks of statistics, roots and sketches split along the block axis over all devices
where the block count is a multiple of the device count, the rest replicated — plus its int32 step counter on
every device. Parameters, gradients and master weights are split like the parameters. So a device holds

    params shard + grads shard + master shard + Σ_tensors tensor_device_bytes(layout, spec) + 4,

and the budget is per device. Specs must divide their dimensions (``mesh_placement.spec_problem``): JAX refuses
uneven shards. Then every shard of a tensor has the same size, so each device holds the same bytes of every
tensor and the largest device's total is the sum of the per-tensor largest shares — what the knapsack adds up
(``largest_tensor_bytes``). The step workspace is counted as on one device (XLA's per-device transients are not
modelled; the whole tensor's transients bound them).

- ``as_mesh``: a ``jax.sharding.Mesh`` / ``AbstractMesh`` (read by attribute, JAX is never imported) or a mapping
  axis → size, as an ordered dict; ``parse_mesh("data=4,model=2")`` reads the CLI form; ``mesh_label`` writes it.
- ``as_spec``: a ``PartitionSpec`` (or tuple / list) as a tuple of entries; ``resolve_specs``: each parameter's
  spec from ``partition_specs`` (a mapping name → spec, or a pytree of ``PartitionSpec`` shaped like the params),
  else from the model (a factory's sharded leaves, a shapes file's ``spec:``), else replicated; checked.
- ``device_state_bytes(plan, mesh, specs)``: each device's state bytes of a built plan.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Mapping

from ..errors import UserError
from ..methods import state_layout
from ..methods.layout import MethodConfig, OptimizerDefaults, dtype_bytes
from ..methods.mesh_placement import Spec, even_tensor_bytes, shard_elements, spec_problem, tensor_device_bytes

if TYPE_CHECKING:
    from .analysis import ModelSpec, ParamSpec
    from .memory import Precision
    from .plan import Plan

#: The direction transformation's step counter (``SketchplanState.count``), replicated.
COUNT_BYTES = 4

MeshKey = tuple[tuple[str, int], ...]


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=4,model=2"`` → ``{"data": 4, "model": 2}`` (axis order kept)."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, size = part.strip().partition("=")
        if not name or not size.strip().isdigit() or int(size) < 1 or name in out:
            raise UserError(f"mesh {text!r} is not a list of distinct axis=size pairs with sizes ≥ 1; write it "
                            "like data=4,model=2.")
        out[name.strip()] = int(size)
    return as_mesh(out)


def as_mesh(mesh) -> dict[str, int]:
    """Axis name → size, in mesh order, from a mapping or a JAX ``Mesh``/``AbstractMesh`` (its ``shape``)."""
    sizes = getattr(mesh, "shape", mesh) if not isinstance(mesh, Mapping) else mesh
    if not isinstance(sizes, Mapping) or not sizes:
        raise UserError(f"mesh {mesh!r} is neither a jax.sharding.Mesh nor a mapping of axis names to sizes; "
                        "give for example {'data': 4, 'model': 2}.")
    out: dict[str, int] = {}
    for name, size in sizes.items():
        if not isinstance(name, str) or not name or isinstance(size, bool) or not isinstance(size, int) \
                or not 1 <= size <= 2**20:
            raise UserError(f"mesh axis {name!r} of size {size!r}: axis names are strings and sizes integers from 1 "
                            "to 2^20; give for example {'data': 4, 'model': 2}.")
        out[name] = size
    if math.prod(out.values()) > 2**20:
        raise UserError(f"mesh {mesh_label(out)} has {math.prod(out.values()):,} devices, more than sketchplan "
                        "plans for (2^20); check the axis sizes.")
    return out


def mesh_label(mesh: Mapping[str, int]) -> str:
    """``{"data": 4, "model": 2}`` → ``data=4,model=2`` (the ``--mesh`` form)."""
    return ",".join(f"{k}={v}" for k, v in mesh.items())


def mesh_key(mesh: Mapping[str, int] | None) -> MeshKey | None:
    return None if mesh is None else tuple(mesh.items())


def devices(mesh: Mapping[str, int]) -> int:
    return math.prod(mesh.values())


def same_mesh(a: Mapping[str, int] | None, b: Mapping[str, int] | None) -> bool:
    """Equal axes and sizes in the same order; no mesh equals a mesh of one device whatever its axes."""
    if a is None or b is None:
        return devices(a or {}) == devices(b or {}) == 1
    return list(a.items()) == list(b.items())


def _is_partition_spec(x) -> bool:
    """A ``jax.sharding.PartitionSpec`` (class ``jax.P`` in recent JAX), recognised without importing JAX."""
    return type(x).__name__ in ("PartitionSpec", "P") and type(x).__module__.split(".")[0] == "jax"


def _is_spec_like(x) -> bool:
    return x is None or isinstance(x, (tuple, list)) or _is_partition_spec(x)


def as_spec(value, what: str) -> Spec:
    """A ``PartitionSpec``, tuple or list (entries None, an axis name, or a tuple/list of names) as a tuple;
    None is replicated, ``()``. Trailing None entries are dropped (``P('data', None)`` == ``P('data')``)."""
    if value is None:
        return ()
    if not _is_spec_like(value) or isinstance(value, str):
        raise UserError(f"{what}: {value!r} is not a partition spec; give a jax.sharding.PartitionSpec or a list "
                        "such as [null, model].")
    out: list = []
    for e in value:
        if isinstance(e, (tuple, list)):
            e = tuple(e)
            if not all(isinstance(a, str) for a in e):
                raise UserError(f"{what}: spec entry {e!r} must hold axis names only; write for example [data, model].")
            e = e if len(e) > 1 else (e[0] if e else None)
        elif e is not None and not isinstance(e, str):
            raise UserError(f"{what}: spec entry {e!r} is neither null, an axis name nor a list of axis names.")
        out.append(e)
    while out and out[-1] is None:
        out.pop()
    return tuple(out)


def _spec_mapping(partition_specs) -> dict[str, object]:
    """Name → raw spec from a mapping name → spec, or from a pytree of ``PartitionSpec`` shaped like the
    parameters (flattened with JAX, imported only then; names are key paths, ``pytree.key_path_name``)."""
    if isinstance(partition_specs, Mapping) and all(isinstance(k, str) for k in partition_specs) \
            and all(_is_spec_like(v) for v in partition_specs.values()):
        return dict(partition_specs)
    try:
        import jax
    except ImportError:
        raise UserError("partition_specs is neither a mapping of parameter names to specs nor (without JAX "
                        "installed) a pytree; give a mapping such as {'dense/kernel': (None, 'model')}.") from None
    from ..pytree import key_path_name

    leaves = jax.tree_util.tree_flatten_with_path(
        partition_specs, is_leaf=_is_partition_spec)[0]
    return {key_path_name(path): leaf for path, leaf in leaves}


def resolve_specs(spec: "ModelSpec", mesh: Mapping[str, int], partition_specs=None) -> dict[str, Spec]:
    """Each parameter's checked spec (name → tuple; replicated ones are ``()``): ``partition_specs`` first, then
    the model's own (``ParamSpec.spec``). ``UserError`` naming the tensor for a spec the mesh cannot hold, a
    name that is not a parameter, or a model whose arrays sit on another mesh."""
    if spec.mesh is not None and not same_mesh(spec.mesh, mesh):
        raise UserError(f"the model's arrays are sharded over mesh {mesh_label(spec.mesh)} but the plan is for "
                        f"mesh {mesh_label(mesh)}; plan with --mesh {mesh_label(spec.mesh)} (or shard the arrays "
                        "over the planned mesh).")
    given = _spec_mapping(partition_specs) if partition_specs is not None else {}
    names = {n: p.name for p in spec.params for n in (p.name, *p.tied)}
    unknown = [n for n in given if n not in names and not (n.endswith("/value") and n[:-6] in names)]
    if unknown:
        raise UserError(f"partition_specs names {unknown[0]!r}, which is not a parameter of the model; use the "
                        "parameters' key paths such as 'params/Dense_0/kernel'.")
    by_param = {}
    for n, s in given.items():
        by_param[names.get(n) or names[n[:-6]]] = s
    out: dict[str, Spec] = {}
    for p in spec.params:
        raw = by_param.get(p.name, p.spec)
        s = as_spec(raw, f"tensor {p.name!r}")
        problem = spec_problem(p.shape, s, mesh)
        if problem:
            raise UserError(f"tensor {p.name!r} of shape {list(p.shape)}: {problem}; fix its partition spec or the "
                            "mesh.")
        out[p.name] = s
    return out


@lru_cache(maxsize=65536)
def _tensor_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults, spec: Spec,
                  mesh: MeshKey) -> int | tuple[int, ...]:
    """The bytes every device holds (an int) when the spec divides the tensor, else the per-device tuple."""
    layout = state_layout(shape, cfg, opts)
    even = even_tensor_bytes(layout, shape, spec, dict(mesh))
    return even if even is not None else tuple(tensor_device_bytes(layout, shape, spec, dict(mesh)))


def tensor_bytes_by_device(shape, cfg: MethodConfig, opts: OptimizerDefaults, spec: Spec,
                           mesh: Mapping[str, int]) -> tuple[int, ...]:
    """One tensor's state bytes on each device (row-major device order), cached."""
    b = _tensor_bytes(tuple(shape), cfg, opts, tuple(spec), mesh_key(mesh))
    return (b,) * devices(mesh) if isinstance(b, int) else b


def largest_tensor_bytes(shape, cfg: MethodConfig, opts: OptimizerDefaults, spec: Spec,
                         mesh: Mapping[str, int]) -> int:
    """One tensor's state bytes on the device holding most of it (the knapsack's weight of a candidate)."""
    b = _tensor_bytes(tuple(shape), cfg, opts, tuple(spec), mesh_key(mesh))
    return b if isinstance(b, int) else max(b)


def state_by_device(tensors: Iterable[tuple[tuple[int, ...], MethodConfig, OptimizerDefaults, Spec]],
                    mesh: Mapping[str, int]) -> list[int]:
    """Each device's optimizer-state bytes of ``(shape, config, options, spec)`` tensors, with the step count."""
    n = devices(mesh)
    even, total = COUNT_BYTES, None
    for shape, cfg, opts, spec in tensors:
        b = _tensor_bytes(tuple(shape), cfg, opts, tuple(spec), mesh_key(mesh))
        if isinstance(b, int):
            even += b
        else:
            total = [0] * n if total is None else total
            for i, x in enumerate(b):
                total[i] += x
    return [even + (0 if total is None else total[i]) for i in range(n)]


def fixed_by_device(spec: "ModelSpec", prec: "Precision", mesh: Mapping[str, int],
                    specs: Mapping[str, Spec]) -> tuple[list[int], list[int], list[int]]:
    """Parameter, gradient and master-weight bytes of each device: each split like its parameter."""
    n = devices(mesh)
    params, grads, master = [0] * n, [0] * n, [0] * n
    for p in spec.params:
        elems = shard_elements(p.shape, specs.get(p.name, ()), mesh)
        numel = max(1, p.numel)
        for out, nbytes in ((params, prec.param_bytes(p)), (grads, prec.grad_bytes(p)),
                            (master, prec.master_bytes(p))):
            if nbytes:
                for i, e in enumerate(elems):
                    out[i] += nbytes // numel * e
    return params, grads, master


def plan_mesh(plan: "Plan") -> dict[str, int] | None:
    """The mesh a plan was made for (``Settings.mesh``), or None."""
    return None if plan.settings.mesh is None else dict(plan.settings.mesh)


def plan_specs(plan: "Plan") -> dict[str, Spec]:
    """Parameter name (and tied names) → the spec the plan recorded (``TensorEntry.spec``)."""
    out = {}
    for e in plan.tensors:
        s = as_spec(e.spec, f"tensor {e.name!r}") if e.spec is not None else ()
        for n in (e.name, *e.tied):
            out[n] = s
    return out


def device_state_bytes(plan: "Plan", mesh: Mapping[str, int], specs: Mapping[str, Spec]) -> list[int]:
    """Bytes of the plan's optimizer state on each device of ``mesh`` (row-major device order).

    ``specs``: parameter name → partition spec (a tuple of None / axis name / tuple of axis names per
    dimension); a parameter without one is replicated. Frozen entries hold nothing."""
    unknown = {a for s in specs.values() for e in s if e is not None
               for a in ((e,) if isinstance(e, str) else e)} - set(mesh)
    if unknown:
        raise UserError(f"partition specs name mesh axes {sorted(unknown)} that the mesh {dict(mesh)} lacks; "
                        "use the mesh's axis names.")
    rows = []
    for e in plan.tensors:
        cfg = e.config()
        if cfg is None:
            continue
        spec = next((tuple(specs[n]) for n in (e.name, *e.tied) if n in specs), ())
        rows.append((tuple(int(d) for d in e.shape), cfg, plan.defaults.model_copy(update=e.options()), spec))
    return state_by_device(rows, mesh)
