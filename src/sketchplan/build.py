"""From a plan to an optimizer: ``build_optimizer`` (torch) and ``build_optax`` (JAX/optax).

This module sits above both the planner (it reads a ``Plan``) and the backends (``optimizers.torch``,
``optimizers.jax``), so no import runs from a backend up into the planner. Each framework is imported only by the
function that needs it; a missing one is a one-sentence error naming the extra to install.

``build_optimizer(plan, model)``: one ``torch.optim.Optimizer`` for a whole model. Tensors with identical (method
config, kernel variants) share one param group; the plan's ``defaults`` fill every group and each entry's recorded
kernel variants (``TensorEntry.variant``: the FD-update variant and the inverse-root method fastest on the
profiled device) override ``fd_variant`` / ``root_method`` in its group. The plan must match the model: the same
trainable names (tied weights are listed once, under the name ``model.named_parameters()`` yields, with their
other names in ``tied``), the same shapes and the same ``model_fingerprint``. ``allow_mismatch=True`` turns
mismatches into warnings and gives unplanned tensors Adam. With ``settings.master_weights`` the optimizer keeps an
fp32 master copy of each 16-bit parameter (``optimizers.torch.base``). A multi-rank plan builds the distributed
optimizer (``optimizers.torch.distributed``): pass the model DDP-wrapped (ddp, zero1), sharded by ``fully_shard``
(fsdp, hsdp) or unwrapped (zero2: the optimizer's hooks reduce each gradient to the tensor's owner).

``build_optax(plan, params)``: the JAX twin: each leaf, named by its key path (``params/Dense_0/kernel``, the names
``planner.analysis`` gives a pytree; a flax nnx ``…/value`` suffix matches either way), gets its plan entry's
method config, with the plan's ``defaults`` and the entry's recorded kernel variants as options; frozen entries
get zero updates. ``scale_by_plan`` is its direction-only part, for ``optax.chain``. The plan must match the tree (names,
shapes, fingerprint); a mismatch is a ``UserError`` naming the key path.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from .errors import UserError, require
from .methods.layout import MethodConfig, OptimizerDefaults
from .planner.analysis import analyze_pytree, model_fingerprint

if TYPE_CHECKING:
    import optax
    import torch

    from .optimizers.jax.transform import LearningRate
    from .optimizers.torch import SketchplanOptimizer
    from .planner.plan import Plan, TensorEntry


def _problem(allow: bool, message: str) -> None:
    if not allow:
        raise UserError(message)
    warnings.warn(f"sketchplan (allow_mismatch: unplanned tensors get Adam): {message}", RuntimeWarning,
                  stacklevel=3)


def build_optimizer(plan: Plan, model: "torch.nn.Module", allow_mismatch: bool = False) -> "SketchplanOptimizer":
    """One optimizer for ``model`` whose param groups carry each tensor's planned method and options.

    Raises ``UserError`` (one sentence naming the tensor) when the plan does not match the model, unless
    ``allow_mismatch`` is set: then mismatched or unplanned trainable tensors get Adam with a warning and
    plan entries the model lacks are ignored.
    """
    require("torch", "build_optimizer")
    if plan.settings.mesh is not None:
        from .planner.mesh import mesh_label

        raise UserError(f"the plan was made for the JAX mesh {mesh_label(plan.settings.mesh)}; build it with "
                        "build_optax(plan, params), or plan without --mesh (--world-size for torch ranks).")
    from .optimizers.torch import SketchplanOptimizer, group_options
    from .optimizers.torch import distributed as dist_opt

    wrapped = _unwrap(model)  # DDP prefixes every name with ``module.``: plan names are the inner module's
    wrapped_ddp = wrapped is not model
    model = wrapped

    adam = MethodConfig(method="adam")
    entries: dict[str, TensorEntry] = {}
    for e in plan.tensors:
        for name in [e.name, *e.tied]:
            entries[name] = e
    seen: set[str] = set()
    groups: dict[tuple[MethodConfig, tuple], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        e = entries.get(name)
        cfg: MethodConfig | None = adam
        variant: tuple = ()
        if e is None:
            _problem(allow_mismatch, f"tensor {name!r} of the model is not in the plan; regenerate the plan.")
        else:
            seen.add(e.name)
            if tuple(e.shape) != tuple(p.shape):
                _problem(allow_mismatch, f"tensor {name!r} has shape {tuple(p.shape)} in the model but "
                                         f"{tuple(e.shape)} in the plan; regenerate the plan.")
            elif getattr(e, "excluded", None) and p.requires_grad:  # the plan says why (e.g. a complex dtype)
                warnings.warn(f"sketchplan: tensor {name!r} is left out of this optimizer: {e.excluded}.",
                              RuntimeWarning, stacklevel=2)
                cfg = None
            elif e.config() is None and p.requires_grad:
                _problem(allow_mismatch, f"tensor {name!r} is trainable in the model but frozen in the plan; "
                                         "regenerate the plan.")
            else:
                cfg = e.config()
                variant = tuple(sorted(e.options().items()))  # the kernel variants the plan picked
        if cfg is not None and p.requires_grad:
            groups.setdefault((cfg, variant), []).append(p)
    for e in plan.tensors:
        if e.name not in seen:
            _problem(allow_mismatch, f"tensor {e.name!r} of the plan is not in the model; regenerate the plan.")
    fp = model_fingerprint(model)  # after the per-tensor checks, which name the tensor; this catches dtype changes
    if fp != plan.model.fingerprint:
        _problem(allow_mismatch, f"the plan was made for a different model (fingerprint "
                                 f"{plan.model.fingerprint[:12]}…, this model {fp[:12]}…: a dtype or trainable "
                                 "flag changed); regenerate it with `sketchplan plan`.")
    if not groups:
        raise UserError("the plan leaves no trainable tensor of the model to optimize; check which parameters "
                        "require grad.")
    param_groups = [{"params": ps, **group_options(cfg, plan.defaults), **dict(variant)}
                    for (cfg, variant), ps in groups.items()]
    s = plan.settings
    kind = s.parallelism if s.parallelism != "none" else ("zero1" if s.shard_optimizer_state else "ddp")
    all_params = [p for ps in groups.values() for p in ps]
    dist_opt.check_running(kind, s.world_size, s.shard_group, all_params, wrapped_ddp)
    if s.world_size > 1 or any(dist_opt.is_dtensor(p) for p in all_params):  # FSDP2, also on one rank
        _refuse_unplaceable([cfg for cfg, _ in groups], kind if s.world_size > 1 else "fsdp")
        names = {id(p): entries[n].name for n, p in model.named_parameters() if n in entries}
        return dist_opt.build_distributed(
            param_groups, adam, plan.defaults, kind=kind if s.world_size > 1 else "fsdp", world=s.world_size,
            names=names,
            owners={e.name: e.owners for e in plan.tensors if e.owners is not None},
            rest_owner={e.name: e.owner for e in plan.tensors if e.owner is not None},
            master_weights=s.master_weights)
    return SketchplanOptimizer(param_groups, adam, plan.defaults, master_weights=s.master_weights)


def _unwrap(model):
    """The module a ``DistributedDataParallel`` wrapper holds (names without ``module.``), else ``model``."""
    import torch

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _aliases(name: str) -> list[str]:
    """``name`` and its flax nnx twin: ``nnx.state`` trees name a leaf ``l1/kernel/value`` (the Variable's value),
    the arrays ``nnx.Optimizer`` updates ``l1/kernel``."""
    if name == "value" or name.endswith("/value"):
        return [name, name[: -len("/value")]]
    return [name, f"{name}/value"]


def plan_assignments(plan: "Plan", params) -> dict[str, tuple[MethodConfig, OptimizerDefaults] | None]:
    """What each leaf of ``params`` gets from ``plan`` (None: frozen); ``UserError`` on any mismatch."""
    if plan.settings.world_size > 1:
        raise UserError(f"the plan was made for {plan.settings.world_size} ranks; multi-rank plans build torch "
                        "optimizers (build_optimizer) only: plan with --world-size 1 for optax.")
    entries = {}
    for e in plan.tensors:
        for name in [e.name, *e.tied]:
            entries[name] = e
    out: dict[str, tuple[MethodConfig, OptimizerDefaults] | None] = {}
    require("jax", "build_optax")
    from .optimizers.jax.transform import named_leaves

    for name, leaf in named_leaves(params)[0]:
        if name in out:
            raise UserError(f"two leaves of the parameter tree are both named {name!r} (a key containing '/' next "
                            "to a nested path); rename one so every key path is unique.")
        e = next((entries[n] for n in _aliases(name) if n in entries), None)
        if e is None:
            raise UserError(f"parameter {name!r} of the tree is not in the plan; regenerate the plan.")
        shape = tuple(int(d) for d in leaf.shape)
        if tuple(e.shape) != shape:
            raise UserError(f"parameter {name!r} has shape {shape} in the tree but {tuple(e.shape)} in the plan; "
                            "regenerate the plan.")
        cfg = e.config()
        out[name] = None if cfg is None else (cfg, plan.defaults.model_copy(update=e.options()))
    missing = [e.name for e in plan.tensors
               if not ({n for m in (e.name, *e.tied) for n in _aliases(m)} & out.keys())]
    if missing:
        raise UserError(f"tensor {missing[0]!r} of the plan is not in the parameter tree; regenerate the plan.")
    fp = analyze_pytree(params).fingerprint
    if fp != plan.model.fingerprint:
        raise UserError(f"the plan was made for a different model (fingerprint {plan.model.fingerprint[:19]}…, "
                        f"this tree {fp[:19]}…: a dtype changed); regenerate it with `sketchplan plan`.")
    if all(a is None for a in out.values()):
        raise UserError("the plan leaves no parameter of the tree to optimize.")
    return out


def scale_by_plan(plan: "Plan", params) -> "optax.GradientTransformation":
    """The plan's direction-only transformation for ``params`` (each leaf's method direction D, no learning rate
    or weight decay; ``optimizers.jax.transform.scale_by_assignment``), to compose with ``optax.chain``.
    Leaves are matched by key path, a flax nnx ``…/value`` suffix either way (``_aliases``)."""
    assignments = plan_assignments(plan, params)
    require("optax", "build_optax")
    from .optimizers.jax.transform import scale_by_assignment

    def assign(name: str, shape: tuple[int, ...]):
        for n in _aliases(name):
            if n in assignments:
                return assignments[n]
        raise UserError(f"parameter {name!r} was not in the tree the transformation was built for; build it "
                        "again with build_optax(plan, params).")

    tx = scale_by_assignment(assign)
    if plan.settings.mesh is None:
        return tx
    check_mesh(plan, params, at_build=True)

    def init(params):
        check_mesh(plan, params)
        return tx.init(params)

    return tx._replace(init=init)


def check_mesh(plan: "Plan", params, at_build: bool = False) -> None:
    """Refuse (``UserError``, one sentence) to place a mesh plan's state on another mesh, or parameters split
    otherwise than the plan's specs: its per-device figures would not hold. The mesh is the one the state would
    be placed on (``optimizers.jax.placement.context_mesh``: ``jax.set_mesh``'s, else the params'); when none is
    found, concrete single-device arrays are refused at ``init`` and anything else (tracers, ``tree_map_params``'s
    placeholders, a build before ``jax.set_mesh``) passes."""
    import jax

    from .optimizers.jax.placement import context_mesh, is_explicit, mesh_axes, spec_of
    from .optimizers.jax.transform import named_leaves
    from .planner.mesh import as_spec, mesh_label, plan_mesh, plan_specs, same_mesh

    planned = plan_mesh(plan)
    named = named_leaves(params)[0]
    leaves = [x for _, x in named]
    mesh = context_mesh(leaves)
    concrete = [x for x in leaves if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)]
    if mesh is None and (at_build or not concrete):
        return
    found = None if mesh is None else mesh_axes(mesh)
    if not same_mesh(found, planned):
        where = "no mesh (single-device arrays, no jax.set_mesh)" if found is None else f"mesh {mesh_label(found)}"
        raise UserError(f"the plan was made for mesh {mesh_label(planned)} but the state would be placed on {where}; "
                        f"make the plan with --mesh {mesh_label(found) if found else '…'} (mesh=) for this one, or "
                        f"run on mesh {mesh_label(planned)}.")
    specs = plan_specs(plan)
    concrete_ids = {id(x) for x in concrete}
    for name, x in named:
        sharding = getattr(x, "sharding", None) if id(x) in concrete_ids else None
        if sharding is not None and hasattr(sharding, "spec"):
            have = tuple(sharding.spec)
        elif mesh is not None and is_explicit(mesh) and isinstance(x, jax.core.Tracer):
            have = spec_of(x)
        else:
            continue
        want = next((specs[n] for n in _aliases(name) if n in specs), ())
        have = as_spec(have, f"parameter {name!r}")
        if have != want:
            raise UserError(f"parameter {name!r} is split as P{have!r} but the plan was made for P{want!r}; place it "
                            "as the plan says or make the plan with its specs.")


def build_optax(plan: "Plan", params, learning_rate: "LearningRate" = None,
                mask=None) -> "optax.GradientTransformation":
    """One ``optax.GradientTransformation`` for ``params`` (arrays or ``jax.ShapeDtypeStruct``s) from ``plan``:
    ``optax.chain(scale_by_plan(plan, params), optax.add_decayed_weights(λ, mask), optax.scale_by_learning_rate(η))``.

    ``learning_rate`` η: a float or an optax schedule; None uses the plan's ``defaults.lr``. λ is the plan's
    ``defaults.weight_decay`` (no decay step at all when 0), ``mask`` optax's (a tree of booleans or a function of
    the params). The state is a tuple whose first element is ``SketchplanState`` (each tensor's layout arrays,
    exactly the plan's state bytes, plus one int32 counter; a schedule adds optax's own int32 counter).
    Raises ``UserError`` naming the key path when the plan does not match the tree.
    """
    direction = scale_by_plan(plan, params)
    import jax

    from .optimizers.jax.constructors import with_learning_rate
    from .pytree import key_path_name

    frozen = {n for n, a in plan_assignments(plan, params).items() if a is None}
    if frozen and plan.defaults.weight_decay:  # frozen entries get zero updates: no decay either
        user = mask

        def mask(tree):
            planned = jax.tree_util.tree_map_with_path(
                lambda path, _: not set(_aliases(key_path_name(path))) & frozen, tree)
            if user is None:
                return planned
            chosen = user(tree) if callable(user) else user
            return jax.tree.map(lambda a, b: bool(a) and b, planned, chosen)

    lr = plan.defaults.lr if learning_rate is None else learning_rate
    return with_learning_rate(direction, lr, plan.defaults.weight_decay, mask)


def _refuse_unplaceable(configs, kind: str) -> None:
    """Refuse what the distributed optimizer cannot place: compressed state is decoded by ``SketchplanOptimizer``
    only (the distributed optimizer's placement assumes plain element-wise state), and Muon orthogonalises whole
    matrices, which FSDP/HSDP shard."""
    from .methods.compression import is_compressed

    if any(is_compressed(c) for c in configs):
        raise UserError("compressed optimizer state (compress bfloat16/int8, int8 momentum) is single-process only "
                        "for now; plan without --compress and int8 --momenta for multi-rank training.")
    if kind in ("fsdp", "hsdp") and any(c.method == "muon" for c in configs):
        raise UserError("Muon orthogonalises whole matrices, which FSDP/HSDP shard across ranks; plan with "
                        "--parallelism ddp/zero1/zero2 or leave muon out of --methods.")
