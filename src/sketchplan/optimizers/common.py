"""State shared by the matrix methods: grafting and momentum (ALGORITHMS.md §2, Agarwal et al. grafting).

Grafting keeps the step size of a diagonal method: per block, D ← D · ‖A‖_F / (‖D‖_F + tiny), where A is the
graft's direction. Its state:

- ``adam``: bias-corrected EMA of g² (param-shaped), ``graft_exp_avg_sq``;
- ``rmsprop``: EMA of g² without bias correction (param-shaped), ``graft_exp_avg_sq``;
- ``adafactor``: factored second moments (Shazeer & Stern 2018) of the merged tensor viewed as a matrix
  (d0, numel/d0): row sums ``graft_row`` (d0) and column sums ``graft_col`` (numel/d0), v̂ = r cᵀ / Σr;
  a merged tensor of order ≤ 1 keeps the unfactored vector ``graft_v`` (numel);
- ``sgd``: nothing.

Momentum: a param-shaped buffer ``momentum`` in float32 or bfloat16, or none.

The second half of this module holds the arithmetic shared by the methods' steps: the EMA/running-sum
convention for β2 (β2 = 1 means a plain sum, without (1−β2) and without bias correction), the graft's
direction, EMA momentum m ← β1 m + (1−β1) D (optionally Nesterov), and decoupled weight decay with the step.
"""

from __future__ import annotations

import math

import torch

from .blocking import merged_shape
from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor


def adafactor_factors(shape: tuple[int, ...], merge_dims: int) -> tuple[int, ...]:
    """Lengths of the adafactor graft's vectors: (rows, cols) for order ≥ 2, (numel,) otherwise."""
    merged = merged_shape(shape, merge_dims)
    numel = math.prod(shape)
    if len(merged) >= 2:
        return (merged[0], numel // merged[0])
    return (numel,)


def graft_layout(shape: tuple[int, ...], graft: str, opts: OptimizerDefaults) -> list[StateTensor]:
    """State tensors of the graft (see module docstring)."""
    if graft in ("adam", "rmsprop"):
        return [StateTensor("graft_exp_avg_sq", tuple(shape), opts.state_dtype)]
    if graft == "adafactor":
        f = adafactor_factors(shape, opts.merge_dims)
        if len(f) == 2:
            return [StateTensor("graft_row", (f[0],), opts.state_dtype),
                    StateTensor("graft_col", (f[1],), opts.state_dtype)]
        return [StateTensor("graft_v", f, opts.state_dtype)]
    if graft == "sgd":
        return []
    raise ValueError(f"unknown graft {graft!r}")


def momentum_layout(shape: tuple[int, ...], momentum: str) -> list[StateTensor]:
    """The momentum buffer, if any."""
    if momentum == "none":
        return []
    return [StateTensor("momentum", tuple(shape), momentum)]


def diagonal_tail(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Graft, momentum and the skip counter: what every matrix method keeps besides its preconditioner."""
    return graft_layout(shape, cfg.graft, opts) + momentum_layout(shape, cfg.momentum) + [SKIP_COUNTER]


# ---- the step pieces shared by the methods (layouts above, arithmetic below) ----

def ema_weights(beta2: float) -> tuple[float, float]:
    """(decay, weight) of a second-moment update s ← decay·s + weight·x: (β2, 1−β2), or (1, 1) when β2 = 1
    (a running sum, AdaGrad-style)."""
    return (beta2, 1.0 - beta2) if beta2 < 1 else (1.0, 1.0)


def stats_weights(beta2: float, every: int) -> tuple[float, float]:
    """(decay, weight) of a matrix-statistics update that stands for ``every`` steps (step skipping, Sketchy
    paper App. F): the sampled gradient's G Gᵀ replaces the ``every`` gradients since the last update, so the
    EMA decays by β2^f and weighs the new term 1 − β2^f; a running sum (β2 = 1) adds it f times."""
    if beta2 >= 1:
        return 1.0, float(every)
    return beta2**every, 1.0 - beta2**every


def bias_correction(beta2: float, step: int) -> float:
    """Adam's 1 − β2ᵗ; 1 for a running sum (β2 = 1)."""
    return 1.0 - beta2**step if beta2 < 1 else 1.0


def _scaled(g: torch.Tensor, v: torch.Tensor, correction: float, eps: float) -> torch.Tensor:
    return g / ((v / correction).sqrt_().add_(eps))


def graft_direction(state: dict, g: torch.Tensor, graft: str, opts: OptimizerDefaults, step: int) -> torch.Tensor:
    """Update the graft's state with gradient ``g`` (state dtype) and return its direction A (param-shaped).

    adam: v ← decay·v + w·g², A = g / (√(v / (1−β2ᵗ)) + ε); rmsprop: the same without bias correction;
    adafactor (Shazeer & Stern 2018): row and column sums r, c of g² (merged tensor as a matrix),
    v̂ = r cᵀ / Σr (bias-corrected), A = g / (√v̂ + ε); sgd: A = g.
    """
    if graft == "sgd":
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
