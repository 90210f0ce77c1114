"""The torch arithmetic of the step pieces every method shares (docs/algorithms.md, Grafting and momentum): the graft's direction, EMA
momentum (optionally Nesterov) and decoupled weight decay with the step. The graft and momentum *state* (what is
allocated) is declared in ``methods.common``; the scalar conventions (β2 = 1 as a running sum, bias correction)
come from there too.
"""

from __future__ import annotations

import torch

from ...methods.common import bias_correction, ema_weights
from ...methods.layout import OptimizerDefaults


def _scaled(g: torch.Tensor, v: torch.Tensor, correction: float, eps: float) -> torch.Tensor:
    """g / (√v / √correction + ε) (torch AdamW's order of operations) with one temporary, which becomes the
    result: a fresh parameter-sized buffer costs page faults on CPU (the graft of GPT-2's 38.6 M-parameter
    embedding took 162 ms a step with two of them)."""
    denom = v.sqrt()
    denom.mul_(correction ** -0.5).add_(eps)
    return torch.div(g, denom, out=denom)


def graft_direction(state: dict, g: torch.Tensor, graft: str, opts: OptimizerDefaults, step: int) -> torch.Tensor:
    """Update the graft's state with gradient ``g`` (state dtype) and return its direction A (param-shaped).

    adam: v ← decay·v + w·g², A = g / (√(v / (1−β2ᵗ)) + ε); rmsprop: the same without bias correction;
    adafactor (Shazeer & Stern 2018): row and column sums r, c of g² (merged tensor as a matrix),
    v̂ = r cᵀ / Σr (bias-corrected), A = g / (√v̂ + ε); sgd and none: A = g.
    """
    if graft in ("sgd", "none"):
        return g
    decay, w = ema_weights(opts.betas[1])
    corr = bias_correction(opts.betas[1], step) if graft != "rmsprop" else 1.0
    if "graft_exp_avg_sq" in state or "graft_v" in state:
        v = state.get("graft_exp_avg_sq", state.get("graft_v"))
        flat = g.reshape(v.shape)
        v.mul_(decay).addcmul_(flat, flat, value=w)
        return _scaled(flat, v, corr, opts.eps).reshape(g.shape)
    r, c = state["graft_row"], state["graft_col"]
    g2 = g.reshape(r.shape[0], c.shape[0]).square()
    r.mul_(decay).add_(g2.sum(1), alpha=w)
    c.mul_(decay).add_(g2.sum(0), alpha=w)
    vhat = torch.outer(r, c) / r.sum().clamp_min(torch.finfo(r.dtype).tiny)
    return _scaled(g.reshape(vhat.shape), vhat, corr, opts.eps).reshape(g.shape)


def apply_momentum(state: dict, d: torch.Tensor, beta1: float, nesterov: bool) -> torch.Tensor:
    """EMA momentum m ← β1 m + (1−β1) D (m kept in its own dtype); returns m, or β1 m + (1−β1) D with Nesterov.
    Without a momentum buffer, D itself."""
    m = state.get("momentum")
    if m is None:
        return d
    if m.dtype == d.dtype:
        m.lerp_(d, 1 - beta1)
        mf = m
    else:
        mf = m.to(d.dtype).lerp_(d, 1 - beta1)
        m.copy_(mf)
    return torch.lerp(d, mf, beta1) if nesterov else mf


def apply_update(p: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float) -> None:
    """Decoupled weight decay (Loshchilov & Hutter 2019) then the step: p ← p(1 − ηλ) − η·update."""
    if weight_decay:
        p.mul_(1 - lr * weight_decay)
    p.add_(update.to(p.dtype), alpha=-lr)
