"""Adafactor (Shazeer & Stern 2018, "Adafactor: adaptive learning rates with sublinear memory cost", ICML), as
``torch.optim.Adafactor`` implements it (its Algorithm 4 with relative step size and update clipping), with an
optional momentum on the clipped update (the paper's β1 > 0 variant).

For a gradient G of order ≥ 2 the second moment is factored over the *last two* axes (every leading axis keeps
its own factors, so stacked experts never share them): with β̂2ₜ = 1 − t^(−0.8),
    R ← lerp(R, mean_{-1}(G²), 1 − β̂2ₜ)      (shape[:-1] + (1,))
    C ← lerp(C, mean_{-2}(G²), 1 − β̂2ₜ)      (shape[:-2] + (1,) + shape[-1:])
    V̂ = R C / max(mean_{-2}(R), ε1)
a vector or scalar keeps V ← lerp(V, G², 1 − β̂2ₜ) (param-shaped). Then
    U = G / √max(V̂, ε1²);   U ← U / max(1, RMS(U)/d);   ρₜ = min(η, 1/√t);   αₜ = max(ε2, RMS(p))·ρₜ
    p ← p(1 − ηλ) − αₜ U        (with momentum: − αₜ m, m ← lerp(m, U, 1−β1))
ε1 = the state dtype's machine epsilon, ε2 = ``EPS2`` = 1e-3, d = ``CLIP`` = 1 (torch's defaults).
State: ``row_var`` and ``col_var`` (or ``variance``) in the state dtype, optional ``momentum``, the skip counter.
Implementations: ``optimizers.torch.adafactor`` (numerically torch.optim.Adafactor without momentum),
``optimizers.jax.adafactor``.
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, pointwise
from .common import momentum_layout
from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .step_calls import momentum_update_calls, sanitize_calls

NAME = "adafactor"
MATRIX = False
#: Quality prior: 0.97 of the diagonal score (a rank-one second moment; the graft factor of ``planner.quality``
#: gives an adafactor graft 0.98 of an adam graft).
SCORE_FACTOR = 0.97
#: torch.optim.Adafactor's defaults: β̂2ₜ = 1 − t^BETA2_DECAY, relative-step floor ε2, update clipping d.
BETA2_DECAY = -0.8
EPS2 = 1e-3
CLIP = 1.0


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries (besides momentum): none."""
    return [{}]


def factored(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 2


def factor_shapes(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(row, col) shapes of the factored second moment (torch.optim.Adafactor's keepdim shapes)."""
    return tuple(shape[:-1]) + (1,), tuple(shape[:-2]) + (1,) + tuple(shape[-1:])


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors Adafactor allocates for one parameter."""
    shape = tuple(shape)
    if factored(shape):
        r, c = factor_shapes(shape)
        out = [StateTensor("row_var", r, opts.state_dtype), StateTensor("col_var", c, opts.state_dtype)]
    else:
        out = [StateTensor("variance", shape, opts.state_dtype)]
    return out + momentum_layout(shape, cfg.momentum) + [SKIP_COUNTER]


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """High-water mark of one Adafactor step (``optimizers.torch.adafactor._step_param``): the gradient in the
    state dtype (a copy for other parameter dtypes); factored: the row and column means of G² one after the
    other, then V̂ = R C (param-sized) and mean(R) (one per leading index); else G² then V's clone; U in place;
    then momentum (a float copy of a bfloat16 buffer) and the update's cast."""
    from .transients import Live, momentum_update

    sb, pb = dtype_bytes(opts.state_dtype), dtype_bytes(param_dtype)
    shape = tuple(shape)
    n = math.prod(shape)
    live = Live(scratch)
    live.alloc(16)
    g = live.alloc(n * sb) if pb != sb else 0
    if factored(shape):
        r, c = factor_shapes(shape)
        live.spike(math.prod(r) * sb)
        live.spike(math.prod(c) * sb)
        v = live.alloc(n * sb)
        live.spike(math.prod(shape[:-2]) * sb)
    else:
        live.spike(n * sb)                 # G², freed once V is updated
        v = live.alloc(n * sb)             # V's clone
    momentum_update(live, n, cfg, opts, sb, pb)
    live.free(v + g)
    return live.peak


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """Sanitize; the two mean-square reductions and factor updates (or G² and V's update), V̂ = R C and its
    normalisation, clamp, rsqrt, ×G, the RMS of U and of p (two reductions), the scaling; momentum, update."""
    shape = tuple(shape)
    numel = math.prod(shape)
    calls = sanitize_calls(numel, opts)
    if factored(shape):
        r, c = factor_shapes(shape)
        calls += [pointwise(numel, 2), pointwise(max(math.prod(r), math.prod(c)), 6), pointwise(numel, 2)]
    else:
        calls += [pointwise(numel, 3)]
    calls += [pointwise(numel, 6)]
    return calls + momentum_update_calls(numel, cfg.momentum, False, opts.weight_decay)
