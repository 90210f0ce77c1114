"""One direction-only optax ``GradientTransformation`` that runs each parameter's method (the JAX
``SketchplanOptimizer`` without the learning rate and weight decay; ``constructors`` chains those on).

``update(grads, state)`` returns each parameter's direction D (``STEPS``: after grafting and momentum), in the
gradient's dtype; ``optax.add_decayed_weights`` and ``optax.scale_by_learning_rate`` after it make −η(D + λp)
(decoupled weight decay, Loshchilov & Hutter 2019). ``params`` are needed only by the methods of
``NEEDS_PARAM`` (Adafactor's relative step size). Frozen parameters (no method) get zero directions. Compressed
state (``methods.compression``) is decoded around the step and packed factors (``methods.packing``) are unpacked
to squares during it (``packing``). Everything is traceable: wrap ``update`` in ``jax.jit``.

State ``SketchplanState`` (explicit arrays; works under ``jax.eval_shape``), shaped like the parameters:

- ``count``: ONE int32 scalar, the number of steps taken (the t of bias corrections), shared by every tensor;
- ``mu``, ``nu``: trees shaped like the parameters holding the elementwise state (``methods.mesh_placement.ELEMENTWISE``:
  ``mu`` = Adam's ``exp_avg`` or a method's ``momentum``, ``nu`` = Adam's ``exp_avg_sq``, the graft's
  ``graft_exp_avg_sq`` or Adafactor's unfactored ``variance``; bfloat16 or uint8 codes where compressed), created with ``jnp.zeros_like(param)`` so they are sharded like their parameter; a
  tensor without that role holds an empty array of 0 bytes (shape (0, …), the parameter's rank, at least 1), so
  both trees always match the parameter tree and ``optax.tree_map_params`` maps the parameters' specs onto them;
- ``factors``: a tuple with one dict per parameter leaf, in flattening order (no names, so two leaves can never
  share an entry), holding the rest of its layout — statistics, roots, sketches, factored grafts, accumulators
  and the int32 ``nonfinite_skips`` counter — placed on the mesh by ``methods.mesh_placement``'s rule (the block axis
  of stacked blocks split over the devices where the block count divides evenly, each device holding whole
  blocks; ``placement``).

Together the arrays are exactly the layouts the plan counts (``methods.<method>.layout``), plus the 4-byte count.
The state of a tree without leaves — ``optax.tree_map_params`` initialises with such a placeholder — has
``factors = NO_FACTORS`` (one empty array, a leaf), so tree_map_params hands the whole ``factors`` tuple to its
``transform_non_params``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

from ...errors import UserError, require
from ...kernels.jax.support import require_jax
from ...methods import state_layout
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.mesh_placement import elementwise_role, factor_spec
from ...pytree import key_path_name
from . import adafactor, adam, extreme_tensoring, kradagrad, lion, muon, shampoo, sketchy, soap
from .compressed import compressed, is_compressed
from .packing import pack_state, unpack_state
from .placement import context_mesh, is_explicit, mesh_axes, place, pspec, run_in_auto_axes, spec_of
from .state import identities, initial_array

jax, jnp = require_jax()

optax = require("optax", "the optax transformations")

#: One step of each method for one parameter: (grad, state dict, step t, cfg, opts) → (direction, new state dict).
STEPS: dict[str, Callable] = {
    "adam": adam.step,
    "shampoo": shampoo.step,
    "blocked_shampoo": shampoo.step,
    "sketchy": sketchy.step,
    "extreme_tensoring": extreme_tensoring.step,
    "kradagrad": kradagrad.step,
    "soap": soap.step,
    "adafactor": adafactor.step,
    "lion": lion.step,
    "muon": muon.step,
}

#: Methods whose step needs the parameter itself (Adafactor's relative step size): ``step(..., param=W)``.
NEEDS_PARAM = ("adafactor",)

#: What a parameter gets: (method config, options) or None for a frozen tensor.
Assignment = Optional[tuple[MethodConfig, OptimizerDefaults]]
Assign = Callable[[str, tuple[int, ...]], Assignment]
LearningRate = Union[float, Callable[[Any], Any], None]


class SketchplanState(NamedTuple):
    """State of ``scale_by_assignment`` (module docstring)."""

    count: Any
    mu: Any
    nu: Any
    factors: Any


def named_leaves(tree) -> tuple[list[tuple[str, Any]], Any]:
    """(key-path name, leaf) pairs of a pytree in flattening order, and its treedef."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(key_path_name(path), leaf) for path, leaf in leaves], treedef


def _absent(p):
    """The 0-byte stand-in of a role a tensor does not have (module docstring)."""
    return jnp.zeros((0,) * max(len(p.shape), 1), p.dtype)


def NO_FACTORS():
    return jnp.zeros((0,), jnp.int32)


def scale_by_assignment(assign: Assign) -> optax.GradientTransformation:
    """The direction-only transformation giving each parameter ``assign(name, shape)`` (module docstring)."""

    def init(params):
        named, treedef = named_leaves(params)
        count = jnp.zeros([], jnp.int32)
        if not named:  # optax.tree_map_params' placeholder (or an empty tree)
            same = jax.tree.map(lambda x: x, params)
            return SketchplanState(count, same, same, NO_FACTORS())
        mesh = context_mesh([p for _, p in named])
        axes = mesh_axes(mesh) if mesh is not None else {}
        mu, nu, factors = [], [], []
        for name, p in named:
            shape = tuple(int(d) for d in p.shape)
            roles, fac = {}, {}
            a = assign(name, shape)
            if a is not None:
                cfg, opts = a
                ids = identities(shape, cfg, opts)
                for t in state_layout(shape, cfg, opts):
                    role = elementwise_role(t, shape)
                    if role is not None:
                        roles[role] = initial_array(t, ids.get(t.name), like=p)
                    else:
                        fac[t.name] = place(initial_array(t, ids.get(t.name)), factor_spec(t.shape, axes), mesh)
            mu.append(roles["mu"] if "mu" in roles else _absent(p))
            nu.append(roles["nu"] if "nu" in roles else _absent(p))
            factors.append(fac)
        return SketchplanState(count, treedef.unflatten(mu), treedef.unflatten(nu), tuple(factors))

    def update(updates, state, params=None):
        named, treedef = named_leaves(updates)
        plist = treedef.flatten_up_to(params) if params is not None else [None] * len(named)
        mu, nu = jax.tree.leaves(state.mu), jax.tree.leaves(state.nu)
        if not isinstance(state.factors, tuple) or not len(state.factors) == len(mu) == len(nu) == len(named):
            raise UserError(f"the update tree has {len(named)} leaves but the optimizer state was initialised for "
                            f"{len(mu)}; initialise the transformation with the same parameter tree the updates "
                            "come from.")
        step = optax.safe_int32_increment(state.count)
        mesh = context_mesh()
        axes = mesh_axes(mesh) if mesh is not None else {}
        out, mu_out, nu_out, fac_out = [], [], [], []
        assigned = [assign(name, tuple(int(d) for d in g.shape)) for name, g in named]
        methods = {a[0].method for a in assigned if a is not None}  # the guard is one answer for the whole tree
        for i, ((name, g), p) in enumerate(zip(named, plist)):
            shape = tuple(int(d) for d in g.shape)
            a = assigned[i]
            if a is None:
                out.append(jnp.zeros_like(g))
                mu_out.append(mu[i]), nu_out.append(nu[i]), fac_out.append(state.factors[i])
                continue
            cfg, opts = a[0], a[1].with_guard_for(methods)
            layout = state_layout(shape, cfg, opts)
            roles = {t.name: elementwise_role(t, shape) for t in layout}
            st = dict(state.factors[i])
            for n, role in roles.items():
                if role is not None:
                    st[n] = (mu if role == "mu" else nu)[i]
            if set(st) != set(roles):
                raise UserError(f"the optimizer state of tensor {name!r} does not match its method's layout; "
                                "initialise the transformation with the same parameter tree.")
            needs_param = cfg.method in NEEDS_PARAM
            if needs_param and p is None:
                raise UserError(f"{cfg.method}'s relative step size needs the parameters: call "
                                "update(grads, state, params).")
            fn = compressed(STEPS[cfg.method]) if is_compressed(cfg) else STEPS[cfg.method]

            def run(g, st, t, p, cfg=cfg, opts=opts, fn=fn, needs_param=needs_param):
                kw = {"param": p} if needs_param else {}
                direction, new = fn(g, unpack_state(st, cfg), t, cfg, opts, **kw)  # packed factors: squares
                return direction, pack_state(new, st, cfg, opts, t)

            p_arg = p if needs_param else None
            if is_explicit(mesh):
                gspec = spec_of(g)
                specs = {n: pspec(gspec if role is not None else factor_spec(st[n].shape, axes))
                         for n, role in roles.items()}
                direction, new = run_in_auto_axes(run, (pspec(gspec), specs), g, st, step, p_arg)
            else:
                direction, new = run(g, st, step, p_arg)
                if mesh is not None:
                    new = {n: x if roles[n] is not None else place(x, factor_spec(x.shape, axes), mesh)
                           for n, x in new.items()}
            out.append(direction.astype(g.dtype))
            mu_out.append(next((new[n] for n, r in roles.items() if r == "mu"), mu[i]))
            nu_out.append(next((new[n] for n, r in roles.items() if r == "nu"), nu[i]))
            fac_out.append({n: x for n, x in new.items() if roles[n] is None})
        return treedef.unflatten(out), SketchplanState(step, treedef.unflatten(mu_out), treedef.unflatten(nu_out),
                                                       tuple(fac_out))

    return optax.GradientTransformation(init, update)


def tensor_state(state: SketchplanState, tree, name: str, cfg: MethodConfig, opts: OptimizerDefaults) -> dict:
    """One parameter's layout arrays by layout name, read back from the tree-shaped ``state`` (the inverse of
    ``init``'s split): its ``factors`` entry plus its ``mu``/``nu`` leaves under the layout names they hold.
    ``tree``: the parameter tree the state was initialised for (or any tree of its structure); ``name`` the leaf's
    key path name (``params/Dense_0/kernel``)."""
    named = [n for n, _ in named_leaves(tree)[0]]
    if name not in named:
        raise UserError(f"parameter {name!r} is not in the tree; name a leaf by its key path.")
    i = named.index(name)
    leaf = named_leaves(tree)[0][i][1]
    shape = tuple(int(d) for d in leaf.shape)
    out = dict(state.factors[i])
    for t in state_layout(shape, cfg, opts):
        role = elementwise_role(t, shape)
        if role is not None:
            out[t.name] = jax.tree.leaves(getattr(state, role))[i]
    return out


def scale_by_uniform(cfg: MethodConfig, opts: OptimizerDefaults) -> optax.GradientTransformation:
    """Every parameter gets ``cfg`` with ``opts`` (direction only)."""
    return scale_by_assignment(lambda name, shape: (cfg, opts))
