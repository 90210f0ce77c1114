"""Muon in torch (``methods.muon``: math, layout, workspace, kernel calls; kernel ``newton_schulz``)."""

from __future__ import annotations

import torch

from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.muon import adam_config, layout, matrix_view, update_scale
from ..torch.adam import AdamRule
from .base import MethodRule, SketchplanOptimizer, register
from .common import apply_momentum, apply_update


class MuonRule(MethodRule):
    """Matrices: momentum, Nesterov, Newton–Schulz, the AdamW-matched scale; other tensors: AdamW."""

    layout = staticmethod(layout)
    adam = AdamRule()

    def step(self, opt, params, cfg, opts):
        mats = [p for p in params if matrix_view(tuple(p.shape), cfg.batch_dims) is not None]
        rest = [p for p in params if matrix_view(tuple(p.shape), cfg.batch_dims) is None]
        if rest:
            self.adam.step(opt, rest, adam_config(cfg), opts)
        if not mats:
            return
        states, grads = self.begin(opt, mats, cfg, opts)
        for p, grad, state in zip(mats, grads, states):
            _step_param(p, grad, state, cfg, opts)


def _step_param(p: torch.Tensor, grad: torch.Tensor, state: dict, cfg: MethodConfig, opts: OptimizerDefaults) -> None:
    from ...kernels.torch.newton_schulz import newton_schulz

    batch, m, n = matrix_view(tuple(p.shape), cfg.batch_dims)
    g = grad.to(getattr(torch, opts.state_dtype))
    u = apply_momentum(state, g, opts.muon_momentum, True) if "momentum" in state else g
    o = newton_schulz(u.reshape(batch, m, n), opts.ns_steps)
    del u
    d = o.reshape(p.shape)
    del o
    d.mul_(update_scale(m, n))
    apply_update(p, d, opts.lr, opts.weight_decay)


class Muon(SketchplanOptimizer):
    """Muon (Jordan et al. 2024) with Nesterov momentum μ, 5 quintic Newton–Schulz iterations and the update RMS
    matched to AdamW (0.2·√max(m, n), Liu et al. 2025), so lr and weight decay are AdamW's; tensors that are no
    matrix get AdamW (``betas``, ``eps``). ``methods.muon`` has the formulas.

    Args: params; lr η; muon_momentum μ (0.95); ns_steps (5); weight_decay λ; momentum dtype (``float32``,
    ``bfloat16``, ``int8``, ``none``); **options: other ``OptimizerDefaults`` fields.
    """

    def __init__(self, params, lr: float = 1e-3, muon_momentum: float = 0.95, ns_steps: int = 5,
                 weight_decay: float = 0.0, momentum: str = "float32", **options):
        cfg = MethodConfig(method="muon", momentum=momentum)
        super().__init__(params, cfg, OptimizerDefaults(lr=lr, muon_momentum=muon_momentum, ns_steps=ns_steps,
                                                        weight_decay=weight_decay, **options))


register("muon", MuonRule())
