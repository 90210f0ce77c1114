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
