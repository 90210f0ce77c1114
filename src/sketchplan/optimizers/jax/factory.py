"""``build_optax``: one optax transformation for a whole JAX parameter tree, built from a plan.

The JAX twin of ``optimizers.factory.build_optimizer``: each leaf, named by its key path (``params/Dense_0/kernel``,
the names ``planner.analysis`` gives a pytree), gets its plan entry's method config, with the plan's ``defaults``
and the entry's recorded kernel variants (``fd_variant``, ``root_method``) as options; frozen entries get zero
updates. The plan must match the tree: the same names, the same shapes and the same model fingerprint (dtypes);
a mismatch is a ``UserError`` naming the key path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import UserError
from ...planner.analysis import analyze_pytree
from ..layout import MethodConfig, OptimizerDefaults
from .transform import LearningRate, named_leaves, sketchplan_transform

if TYPE_CHECKING:
    import optax

    from ...planner.plan import Plan


def plan_assignments(plan: "Plan", params) -> dict[str, tuple[MethodConfig, OptimizerDefaults] | None]:
    """What each leaf of ``params`` gets from ``plan`` (None: frozen); ``UserError`` on any mismatch."""
    entries = {}
    for e in plan.tensors:
        for name in [e.name, *e.tied]:
            entries[name] = e
    out: dict[str, tuple[MethodConfig, OptimizerDefaults] | None] = {}
    for name, leaf in named_leaves(params)[0]:
        e = entries.get(name)
        if e is None:
            raise UserError(f"parameter {name!r} of the tree is not in the plan; regenerate the plan.")
        shape = tuple(int(d) for d in leaf.shape)
        if tuple(e.shape) != shape:
            raise UserError(f"parameter {name!r} has shape {shape} in the tree but {tuple(e.shape)} in the plan; "
                            "regenerate the plan.")
        cfg = e.config()
        out[name] = None if cfg is None else (cfg, plan.defaults.model_copy(update=e.options()))
    missing = [e.name for e in plan.tensors if not ({e.name, *e.tied} & out.keys())]
    if missing:
        raise UserError(f"tensor {missing[0]!r} of the plan is not in the parameter tree; regenerate the plan.")
    fp = analyze_pytree(params).fingerprint
    if fp != plan.model.fingerprint:
        raise UserError(f"the plan was made for a different model (fingerprint {plan.model.fingerprint[:19]}…, "
                        f"this tree {fp[:19]}…: a dtype changed); regenerate it with `sketchplan plan`.")
    if all(a is None for a in out.values()):
        raise UserError("the plan leaves no parameter of the tree to optimize.")
    return out


def build_optax(plan: "Plan", params, learning_rate: LearningRate = None) -> "optax.GradientTransformation":
    """One ``optax.GradientTransformation`` for ``params`` (arrays or ``jax.ShapeDtypeStruct``s) from ``plan``.

    ``learning_rate``: a float or an optax schedule; None uses the plan's ``defaults.lr``. Its state is
    ``SketchplanState``: each tensor's layout arrays (exactly the plan's state bytes) plus one int32 counter.
    Raises ``UserError`` naming the key path when the plan does not match the tree.
    """
    assignments = plan_assignments(plan, params)

    def assign(name: str, shape: tuple[int, ...]):
        if name not in assignments:
            raise UserError(f"parameter {name!r} was not in the tree the transformation was built for; build it "
                            "again with build_optax(plan, params).")
        return assignments[name]

    return sketchplan_transform(assign, learning_rate)
