"""State shared by the matrix methods: grafting and momentum (docs/algorithms.md, Grafting and momentum).

Grafting keeps the step size of a diagonal method: per block, D ← D · ‖A‖_F / (‖D‖_F + tiny), where A is the
graft's direction. Its state:

- ``adam``: bias-corrected EMA of g² (param-shaped), ``graft_exp_avg_sq``;
- ``rmsprop``: EMA of g² without bias correction (param-shaped), ``graft_exp_avg_sq``;
- ``adafactor``: factored second moments (Shazeer & Stern 2018) of the merged tensor viewed as a matrix
  (d0, numel/d0): row sums ``graft_row`` (d0) and column sums ``graft_col`` (numel/d0), v̂ = r cᵀ / Σr;
  a merged tensor of order ≤ 1 keeps the unfactored vector ``graft_v`` (numel);
- ``sgd``: nothing;
- ``none``: no grafting (the preconditioned direction keeps its own scale; where a direction is needed without
  a preconditioner — before ``start_preconditioning_step``, unpreconditionable tensors — it is the gradient, as
  for ``sgd``): nothing.

Momentum: a param-shaped buffer ``momentum`` in float32 or bfloat16, or none.

The second half holds the scalar arithmetic every backend shares: the EMA/running-sum convention for β2
(β2 = 1 means a plain sum, without (1−β2) and without bias correction), the statistics weights under step
skipping, and Adam's bias correction. The tensor arithmetic lives in each backend's ``common`` module.
"""

from __future__ import annotations

import math

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
    if graft in ("sgd", "none"):
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


# ---- scalar arithmetic shared by every backend's step ----

#: A gradient whose float32 squared norm is not finite or exceeds this (2¹⁰⁰ ≈ 1.3e30, i.e. ‖g‖ > 1.1e15) is
#: skipped like a NaN: its squares (graft moments, statistics, G Gᵀ) would overflow float32 or leave state that
#: the next additions overflow. Both backends' ``sanitize`` use it.
GRAD_SQNORM_LIMIT = 2.0**100


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


def preconditioning_start(opts: OptimizerDefaults, stored_roots: bool) -> int:
    """The first preconditioned step (``OptimizerDefaults.start_preconditioning_step``; −1: the refresh period
    for methods with stored roots, 1 for Sketchy)."""
    if opts.start_preconditioning_step < 0:
        return opts.precondition_frequency if stored_roots else 1
    return max(1, opts.start_preconditioning_step)


def bias_correction(beta2: float, step: int) -> float:
    """Adam's 1 − β2ᵗ; 1 for a running sum (β2 = 1)."""
    return 1.0 - beta2**step if beta2 < 1 else 1.0
