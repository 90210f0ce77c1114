"""Extreme tensoring in torch: per-mode sums of G², the broadcast denominator, momentum and the step.
Math, state layout, workspace and kernel calls: ``methods.extreme_tensoring``.
"""

from __future__ import annotations

import torch

from ...methods.common import ema_weights
from ...methods.extreme_tensoring import layout, tensor_dims
from ...methods.layout import MethodConfig, OptimizerDefaults
from .base import MethodRule, SketchplanOptimizer, register
from .common import apply_momentum, apply_update


class ExtremeTensoringRule(MethodRule):
    """Per tensor: mode sums of G² into ``et_acc{i}``, the broadcast denominator, momentum and the step."""

    layout = staticmethod(layout)

    def step_param(self, p, grad, state, cfg, opts):
        _step_param(p, grad, state, opts)


def _step_param(p: torch.Tensor, grad: torch.Tensor, state: dict, opts: OptimizerDefaults) -> None:
    """One tensor's step (a function, so that its temporaries are freed before the next tensor's: the memory
    replay in ``methods.extreme_tensoring.workspace_bytes``)."""
    decay, weight = ema_weights(opts.betas[1])
    dims = tensor_dims(tuple(p.shape), opts.et_max_dim)
    order = len(dims)
    g = grad.to(getattr(torch, opts.state_dtype)).reshape(dims)
    sq = g.square()
    denom = None
    for i, d in enumerate(dims):
        acc = state[f"et_acc{i}"]
        others = [j for j in range(order) if j != i]
        acc.mul_(decay).add_(sq.sum(dim=others) if others else sq, alpha=weight)
        factor = (acc + opts.eps).pow_(1.0 / (2 * order)).reshape([d if j == i else 1 for j in range(order)])
        denom = factor if denom is None else denom * factor
    direction = g / denom
    del sq, denom, factor
    update = apply_momentum(state, direction.reshape(p.shape), opts.betas[0], opts.nesterov)
    apply_update(p, update, opts.lr, opts.weight_decay)


class ExtremeTensoring(SketchplanOptimizer):
    """Extreme tensoring (Chen, Agarwal, Hazan, Zhang & Zhang 2020, "Extreme tensoring for low-memory
    preconditioning", ICLR).

    The gradient is viewed as an order-p tensor (``tensor_dims``); per mode i,
        a_i[j] ← β2 a_i[j] + Σ_{slice i=j} G²      (β2 = 1, the default: running sums as in Algorithm 1)
        D = G / ∏_i (ε + a_i[j_i])^(1/(2p))
    then EMA momentum (optional), decoupled weight decay and the step. p = 1 (``et_max_dim=0``) is diagonal
    AdaGrad with ε inside the square root. Memory Σ_i d_i floats per tensor (plus the optional momentum).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate η.
        betas: (β1 momentum, β2 accumulator decay; default (0.9, 1.0)).
        eps: ε inside each mode's root (default 1e-8).
        et_max_dim: largest mode size when splitting each axis (0: p = 1, diagonal AdaGrad; default 64).
        momentum: ``none`` (default, the paper's method), ``float32`` or ``bfloat16``; nesterov: Nesterov momentum.
        weight_decay: decoupled weight decay λ (default 0).
        **options: any other ``OptimizerDefaults`` field (e.g. ``state_dtype``).
    """

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 1.0), eps: float = 1e-8,
                 et_max_dim: int = 64, momentum: str = "none", **options):
        cfg = MethodConfig(method="extreme_tensoring", momentum=momentum)
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, betas=betas, eps=eps, et_max_dim=et_max_dim,
                                                        **options))


register("extreme_tensoring", ExtremeTensoringRule())
