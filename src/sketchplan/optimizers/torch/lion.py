"""Lion in torch (``methods.lion``: math, layout, workspace, kernel calls)."""

from __future__ import annotations

import torch

from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.lion import layout
from .base import MethodRule, SketchplanOptimizer, register
from .common import apply_update


class LionRule(MethodRule):
    """Per tensor: c = lerp(m, g, 1−β1), D = sign(c), m ← lerp(m, g, 1−β2), the step with lr · lion_lr_ratio."""

    layout = staticmethod(layout)

    def step_param(self, p, grad, state, cfg, opts):
        _step_param(p, grad, state, opts)


def _step_param(p: torch.Tensor, grad: torch.Tensor, state: dict, opts: OptimizerDefaults) -> None:
    beta1, beta2 = opts.lion_betas
    g = grad.to(getattr(torch, opts.state_dtype))
    m = state.get("momentum")
    if m is None:
        d = g.sign()
    else:
        mf = m if m.dtype == g.dtype else m.to(g.dtype)
        d = torch.lerp(mf, g, 1 - beta1).sign_()
        mf.lerp_(g, 1 - beta2)
        if mf is not m:
            m.copy_(mf)
        del mf
    apply_update(p, d, opts.lr * opts.lion_lr_ratio, opts.weight_decay / opts.lion_lr_ratio)


class Lion(SketchplanOptimizer):
    """Lion (Chen et al. 2023, "Symbolic discovery of optimization algorithms"):

        c = β1 m + (1−β1) g;  p ← p(1 − ηλ) − η' sign(c);  m ← β2 m + (1−β2) g,   η' = η · lion_lr_ratio

    Args: params; lr η (the plan's AdamW-scale rate); betas (β1, β2) = (0.9, 0.99); lion_lr_ratio (0.3);
    weight_decay λ (decoupled, applied as p(1 − ηλ)); momentum dtype (``float32``, ``bfloat16``, ``int8``,
    ``none`` = signSGD); **options: other ``OptimizerDefaults`` fields.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99), lion_lr_ratio: float = 0.3,
                 weight_decay: float = 0.0, momentum: str = "float32", **options):
        cfg = MethodConfig(method="lion", momentum=momentum)
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, lion_betas=betas, lion_lr_ratio=lion_lr_ratio,
                                                        weight_decay=weight_decay, **options))


register("lion", LionRule())
