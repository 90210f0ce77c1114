"""Model analysis: one ``ParamSpec`` per parameter tensor, without allocating anything.

``analyze`` accepts an ``nn.Module`` (typically built on the meta device) or an existing ``ModelSpec`` (from a
shapes file). Tied weights — one tensor reachable under several names — are counted once, under the first
name ``named_parameters`` yields, and list their other names in ``tied``. Frozen parameters
(``requires_grad=False``) get no optimizer state but count as parameter memory. Buffers are reported apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field

from ..errors import UserError
from ..methods.layout import DTYPE_BYTES, StateTensor, dtype_bytes
from ..validate import MAX_DIM, MAX_NUMEL, MAX_TENSORS
from ..pytree import key_path_name


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: its canonical name, shape, dtype, whether it trains, its module and aliases."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    trainable: bool = True
    module: str = ""
    tied: tuple[str, ...] = ()
    batch_dims: int = 0  # leading axes indexing independent matrices (stacked experts; planner.structure)
    splits: tuple[int, ...] | None = None  # fused segment sizes along matrix axis split_axis (gate|up, q|k|v)
    split_axis: int = 0
    #: JAX partition spec (one entry per dimension: None, an axis name or a tuple of names) from a sharded leaf or
    #: a shapes file's ``spec:``; None: not given (replicated). Only a plan for a mesh reads it (``planner.mesh``).
    spec: tuple | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_bytes(self.dtype)


#: A buffer is reported like a state tensor: name, shape, dtype (and its bytes).
BufferSpec = StateTensor


@dataclass
class ModelSpec:
    """All parameter tensors of a model (tied ones once) and its buffers."""

    params: list[ParamSpec]
    buffers: list[BufferSpec] = field(default_factory=list)
    source: str = ""
    #: axis → size of the mesh the model's arrays are sharded over (a factory returning sharded arrays), else None
    mesh: dict[str, int] | None = None

    @property
    def trainable(self) -> list[ParamSpec]:
        return [p for p in self.params if p.trainable]

    @property
    def n_params(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def n_trainable(self) -> int:
        return sum(p.numel for p in self.params if p.trainable)

    @property
    def params_bytes(self) -> int:
        return sum(p.nbytes for p in self.params)

    @property
    def buffers_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.params)


def fingerprint_of(params: list[ParamSpec]) -> str:
    """sha256 over (name, shape, dtype, trainable) of every parameter, in order."""
    rows = [[p.name, list(p.shape), p.dtype, bool(p.trainable)] for p in params]
    return "sha256:" + hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def torch_dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def is_torch_module(obj) -> bool:
    """True when ``obj`` is a ``torch.nn.Module``, without importing torch: a module exists only once torch is
    imported, so an object seen while torch is not imported is not one."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def is_pytree_of_arrays(obj) -> bool:
    """True when ``obj`` is a non-empty JAX pytree whose leaves all have a shape and a dtype."""
    if isinstance(obj, (dict, list, tuple)) or type(obj).__module__.startswith(("flax", "jax")):
        try:
            import jax
        except ImportError:
            return False
        leaves = jax.tree_util.tree_leaves(obj)
        return bool(leaves) and all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves)
    return False


def _sharding_of(leaf) -> tuple[tuple | None, dict[str, int] | None]:
    """The partition spec and mesh (axis → size) of a leaf with a ``NamedSharding`` (an array placed with
    ``jax.device_put`` or a ``ShapeDtypeStruct(..., sharding=...)``), read by attribute; (None, None) otherwise."""
    sharding = getattr(leaf, "sharding", None)
    spec, mesh = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
    if spec is None or mesh is None:
        return None, None
    entries = tuple(tuple(e) if isinstance(e, (tuple, list)) else e for e in spec)
    return entries, dict(getattr(mesh, "shape", {}))


def analyze_pytree(tree, source: str = "") -> ModelSpec:
    """Parameter specs of a JAX pytree of arrays or ``jax.ShapeDtypeStruct``s; names are key paths. A leaf with a
    ``NamedSharding`` records its partition spec, and the model the mesh (all such leaves must share one)."""
    import jax

    params, meshes = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = key_path_name(path)
        spec, mesh = _sharding_of(leaf)
        if mesh is not None and mesh not in meshes:
            meshes.append(mesh)
        params.append(ParamSpec(name=name, shape=tuple(int(d) for d in leaf.shape), dtype=str(leaf.dtype),
                                trainable=True, module=name.rsplit("/", 1)[0] if "/" in name else "", spec=spec))
    if len(meshes) > 1:
        raise UserError(f"the model's arrays are sharded over {len(meshes)} different meshes "
                        f"({', '.join(','.join(f'{k}={v}' for k, v in m.items()) for m in meshes[:2])}); place them "
                        "all on one mesh.")
    return ModelSpec(params=params, source=source, mesh=meshes[0] if meshes else None)


def analyze(model, source: str = "") -> ModelSpec:
    """Parameter specs of ``model``: an ``nn.Module``, a JAX pytree of arrays/``ShapeDtypeStruct``s, or a
    ``ModelSpec`` (returned as is)."""
    if isinstance(model, ModelSpec):
        if source and not model.source:
            model.source = source
        return model
    if not is_torch_module(model):
        if is_pytree_of_arrays(model):
            return analyze_pytree(model, source)
        raise TypeError(f"cannot analyse a {type(model).__name__}; pass a torch.nn.Module, a JAX pytree of "
                        "arrays or a ModelSpec")
    first_name: dict[int, str] = {}
    aliases: dict[int, list[str]] = {}
    tensors: dict[int, object] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = id(p)
        if key in first_name:
            aliases[key].append(name)
        else:
            first_name[key] = name
            aliases[key] = []
            tensors[key] = p
    params = []
    for key, name in first_name.items():
        p = tensors[key]
        params.append(ParamSpec(
            name=name,
            shape=tuple(int(d) for d in p.shape),
            dtype=torch_dtype_name(p.dtype),
            trainable=bool(p.requires_grad),
            module=name.rsplit(".", 1)[0] if "." in name else "",
            tied=tuple(aliases[key]),
        ))
    from .structure import annotate

    params = annotate(params, model)
    buffers = [BufferSpec(n, tuple(int(d) for d in b.shape), torch_dtype_name(b.dtype))
               for n, b in model.named_buffers()]
    return ModelSpec(params=params, buffers=buffers, source=source)


def model_fingerprint(model) -> str:
    """Fingerprint of a module's (or spec's) parameters, as stored in a plan."""
    return analyze(model).fingerprint


def check_spec(spec, what: str) -> None:
    """Refuse a model whose tensors no device could hold, or that has nothing to plan.

    Shapes are lists of integers from 0 to ``MAX_DIM`` with at most ``MAX_NUMEL`` elements; dtypes are known
    (``DTYPE_BYTES``); at most ``MAX_TENSORS`` tensors. Zero-sized and complex tensors are valid (the planner
    gives them what they need, see ``planner.make``). Limits from ``sketchplan.validate``.
    """
    params = list(spec.params)
    if len(params) > MAX_TENSORS:
        raise UserError(f"{what} has {len(params):,} parameter tensors, more than the {MAX_TENSORS:,} sketchplan "
                        "plans; check the model.")
    for p in params:
        if p.dtype not in DTYPE_BYTES:
            raise UserError(f"{what}: tensor {p.name!r} has dtype {p.dtype!r}, which sketchplan cannot size; use one "
                            f"of {', '.join(DTYPE_BYTES)}.")
        numel = 1
        for d in p.shape:
            if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_DIM:
                raise UserError(f"{what}: tensor {p.name!r} has shape {list(p.shape)}; every dimension must be an "
                                f"integer from 0 to {MAX_DIM:,} (2^48).")
            numel *= d
        if numel > MAX_NUMEL:
            raise UserError(f"{what}: tensor {p.name!r} of shape {list(p.shape)} has {numel:.3g} elements, more "
                            f"than any device holds (at most 2^48 = {MAX_NUMEL:.3g}); check its shape.")
