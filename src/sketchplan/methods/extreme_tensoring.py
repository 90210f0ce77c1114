"""Extreme tensoring (Chen, Agarwal, Hazan, Zhang & Zhang 2020, "Extreme Tensoring for Low-Memory
Preconditioning").

The parameter is reshaped (row-major) into an order-p tensor with dims (d_1..d_p), ∏ d_i = numel. Per mode i a
vector a_i ∈ R^{d_i} accumulates the squared gradient summed over every slice whose i-th index is j:
    a_i[j] ← β2 a_i[j] + Σ_{slice i=j} G²       (β2 = 1: a running sum, as in the paper's Algorithm 1)
    D[j_1..j_p] = G[j_1..j_p] / ∏_i (ε + a_i[j_i])^(1/(2p))
p = 1 is diagonal AdaGrad. Memory Σ_i d_i floats.

``tensor_dims``: every natural axis (size-1 axes dropped) is split into the fewest near-equal factors that are
each ≤ ``et_max_dim`` (a prime larger than that stays whole); ``et_max_dim = 0`` keeps one mode of numel
(p = 1). State: ``et_acc{i}`` (d_i,) in the state dtype, optional ``momentum``, the skip counter.
Implementations: ``optimizers.torch.extreme_tensoring``, ``optimizers.jax.extreme_tensoring``.
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, pointwise
from .common import momentum_layout
from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .step_calls import momentum_update_calls, sanitize_calls

NAME = "extreme_tensoring"
#: Diagonal-like (per-mode accumulators): no graft options.
MATRIX = False
#: Quality: 0.9 of the diagonal score (its preconditioner is coarser than the diagonal).
SCORE_FACTOR = 0.9


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries (besides momentum): none (``et_max_dim`` is plan-wide)."""
    return [{}]


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def split_axis(d: int, max_dim: int) -> list[int]:
    """Fewest near-equal factors of ``d`` each ≤ ``max_dim`` (primes above ``max_dim`` stay whole)."""
    if d <= max_dim:
        return [d]
    primes = sorted(_prime_factors(d), reverse=True)
    if max_dim <= 1:  # no factor above 1 fits (et_max_dim = 1): every prime stays whole
        return primes
    m = max(2, math.ceil(math.log(d) / math.log(max_dim)))
    while True:
        bins = [1] * m
        for p in primes:  # largest prime into the bin with the smallest product
            j = min(range(m), key=lambda i: bins[i])
            bins[j] *= p
        bins = [b for b in bins if b > 1]
        if all(b <= max_dim or b in primes for b in bins) or m >= len(primes):
            return sorted(bins, reverse=True)
        m += 1


def tensor_dims(shape: tuple[int, ...], max_dim: int) -> tuple[int, ...]:
    """Mode sizes (d_1..d_p) of the reshaped parameter; ∏ d_i = numel."""
    numel = math.prod(shape)
    if max_dim == 0 or numel <= 1:
        return (numel,)
    dims: list[int] = []
    for d in shape:
        if d != 1:
            dims.extend(split_axis(int(d), max_dim))
    return tuple(dims) or (1,)


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors extreme tensoring allocates for one parameter."""
    dims = tensor_dims(tuple(shape), opts.et_max_dim)
    out = [StateTensor(f"et_acc{i}", (d,), opts.state_dtype) for i, d in enumerate(dims)]
    return out + momentum_layout(shape, cfg.momentum) + [SKIP_COUNTER]


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """High-water mark of one step over this parameter beyond params, grads and state (``transients.Live``).

    The gradient in the state dtype (a copy for other parameter dtypes), G², per mode the slice sums and the
    factor, and the broadcast denominator growing mode by mode (the previous partial product alive while the
    next is formed); then G / denominator, momentum and the update.
    """
    from .transients import Live, momentum_update

    sb, pb = dtype_bytes(opts.state_dtype), dtype_bytes(param_dtype)
    n = math.prod(shape)
    dims = tensor_dims(tuple(shape), opts.et_max_dim)
    live = Live(scratch)
    cast = live.alloc(n * sb) if pb != sb else 0
    sq = live.alloc(n * sb)
    denom = factor = 0
    for i, d in enumerate(dims):
        live.spike(d * sb)                   # slice sums
        f = live.alloc(d * sb)               # (acc + ε)^(1/2p)
        if i == 0:
            denom = f
        else:
            live.free(factor if i > 1 else 0)
            new = live.alloc(math.prod(dims[: i + 1]) * sb)
            live.free(denom)
            denom = new
        factor = f
    direction = live.alloc(n * sb)           # G / denominator
    live.free(denom + (factor if len(dims) > 1 else 0) + sq)
    momentum_update(live, n, cfg, opts, sb, pb)
    live.free(direction + cast)
    return live.peak


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The kernel calls of one extreme-tensoring step (``ExtremeTensoringRule.step``).

    G² (one pass), per mode one reduction over it and a few tiny vector operations, the broadcast product of
    the per-mode factors (growing partial products), the division G / denominator, momentum and the update.
    """
    numel = math.prod(shape)
    dims = tensor_dims(tuple(shape), opts.et_max_dim)
    calls = sanitize_calls(numel, opts) + [pointwise(numel, 1 + len(dims) + 1)]
    for i, d in enumerate(dims):
        calls.append(pointwise(d, 4))
        if i:
            calls.append(pointwise(math.prod(dims[: i + 1])))
    return calls + momentum_update_calls(numel, cfg.momentum, opts.nesterov, opts.weight_decay)
