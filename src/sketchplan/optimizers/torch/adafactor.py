"""Adafactor in torch, operation for operation torch.optim.Adafactor's single-tensor step (plus optional
momentum on the clipped update). Math, layout, workspace, kernel calls: ``methods.adafactor``."""

from __future__ import annotations

import math

import torch

from ...methods.adafactor import BETA2_DECAY, CLIP, EPS2, factored, layout
from ...methods.layout import MethodConfig, OptimizerDefaults
from .base import MethodRule, SketchplanOptimizer, register
from .common import apply_momentum, apply_update


class AdafactorRule(MethodRule):
    """Per tensor: factored (or full) second-moment EMA with β̂2ₜ = 1 − t^−0.8, relative step size, clipping."""

    layout = staticmethod(layout)

    def step_param(self, p, grad, state, cfg, opts):
        _step_param(p, grad, state, opts)


def _step_param(p: torch.Tensor, grad: torch.Tensor, state: dict, opts: OptimizerDefaults) -> None:
    dtype = getattr(torch, opts.state_dtype)
    g = grad.to(dtype)
    t = state["step"]
    eps1 = torch.finfo(dtype).eps
    w = t**BETA2_DECAY
    rho = min(opts.lr, 1 / t**0.5)
    alpha = max(EPS2, p.norm(2).item() / (p.numel() ** 0.5)) * rho
    if factored(tuple(p.shape)):
        row, col = state["row_var"], state["col_var"]
        row.lerp_(torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1)), w)
        col.lerp_(torch.norm(g, dim=-2, keepdim=True).square_().div_(g.size(-2)), w)
        v = row @ col
        v.div_(row.mean(dim=-2, keepdim=True).clamp_(min=eps1))
    else:
        var = state["variance"]
        var.lerp_(g * g, w)
        v = var.clone()
    u = v.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)
    denom = max(1.0, u.norm(2).item() / (math.sqrt(u.numel()) * CLIP))
    u.mul_(alpha / (denom * opts.lr))
    update = apply_momentum(state, u, opts.betas[0], False)
    apply_update(p, update, opts.lr, opts.weight_decay)


class Adafactor(SketchplanOptimizer):
    """Adafactor (Shazeer & Stern 2018, "Adafactor: adaptive learning rates with sublinear memory cost"), the
    algorithm of ``torch.optim.Adafactor`` (relative step size max(ε2, RMS(p))·min(η, 1/√t), β̂2ₜ = 1 − t^−0.8,
    update clipping d = 1, second moments factored over the last two axes), with optional momentum (β1 =
    ``betas[0]``) on the clipped update. ``methods.adafactor`` has the formulas.

    Args: params; lr η (default 1e-2, torch's); weight_decay λ (p ← p(1 − ηλ)); momentum dtype (``none`` by
    default, as torch's; ``float32``, ``bfloat16``, ``int8``); **options: other ``OptimizerDefaults`` fields.
    """

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.0, momentum: str = "none", **options):
        cfg = MethodConfig(method="adafactor", momentum=momentum)
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, weight_decay=weight_decay, **options))


register("adafactor", AdafactorRule())
