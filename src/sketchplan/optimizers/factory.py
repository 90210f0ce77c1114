"""``build_optimizer``: one ``torch.optim.Optimizer`` for a whole model, built from a plan.

Tensors with identical (method config, kernel variants) share one param group; the plan's ``defaults`` fill
every group and each entry's recorded kernel variants (``TensorEntry.variant``: the FD-update variant and the
inverse-root method fastest on the profiled device) override ``fd_variant`` / ``root_method`` in its group. The
plan must match the model: the same trainable names (tied weights are listed once, under the name
``model.named_parameters()`` yields, with their other names in ``tied``), the same shapes and, when the
planner's ``model_fingerprint`` is available, the same fingerprint. ``allow_mismatch=True`` turns mismatches into
warnings and gives unplanned tensors Adam.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from .base import SketchplanOptimizer, group_options
from .layout import MethodConfig

if TYPE_CHECKING:  # planner.plan imports optimizers.layout, so import it only for annotations
    from ..planner.plan import Plan, TensorEntry


def _fingerprint(model: torch.nn.Module) -> str | None:
    try:
        from ..planner.analysis import model_fingerprint
    except ImportError:  # the planner's analysis module is optional until it lands
        return None
    return model_fingerprint(model)


def _problem(allow: bool, message: str) -> None:
    if not allow:
        raise UserError(message)
    warnings.warn(f"sketchplan (allow_mismatch: unplanned tensors get Adam): {message}", RuntimeWarning,
                  stacklevel=3)


def build_optimizer(plan: Plan, model: torch.nn.Module, allow_mismatch: bool = False) -> SketchplanOptimizer:
    """One optimizer for ``model`` whose param groups carry each tensor's planned method and options.

    Raises ``UserError`` (one sentence naming the tensor) when the plan does not match the model, unless
    ``allow_mismatch`` is set: then mismatched or unplanned trainable tensors get Adam with a warning and
    plan entries the model lacks are ignored.
    """
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
    fp = _fingerprint(model)  # after the per-tensor checks, which name the tensor; this catches dtype changes
    if fp is not None and fp != plan.model.fingerprint:
        _problem(allow_mismatch, f"the plan was made for a different model (fingerprint "
                                 f"{plan.model.fingerprint[:12]}…, this model {fp[:12]}…: a dtype or trainable "
                                 "flag changed); regenerate it with `sketchplan plan`.")
    if not groups:
        raise UserError("the plan leaves no trainable tensor of the model to optimize; check which parameters "
                        "require grad.")
    param_groups = [{"params": ps, **group_options(cfg, plan.defaults), **dict(variant)}
                    for (cfg, variant), ps in groups.items()]
    return SketchplanOptimizer(param_groups, adam, plan.defaults)
