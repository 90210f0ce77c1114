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
"""

from __future__ import annotations

import math

import torch

from ..kernels.calls import KernelCall, pointwise
from .base import MethodRule, SketchplanOptimizer, register
from .common import apply_momentum, apply_update, ema_weights, momentum_layout
from .step_calls import momentum_update_calls, sanitize_calls
from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes


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


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    """Largest step temporary: G² (for the slice sums) and the broadcast denominator, param-shaped each."""
    return 2 * math.prod(shape) * dtype_bytes(opts.state_dtype)


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The kernel calls of one extreme-tensoring step (``ExtremeTensoringRule.step``).

    G² (one pass), per mode one reduction over it and a few tiny vector operations, the broadcast product of
    the per-mode factors (growing partial products), the division G / denominator, momentum and the update.
    """
    numel = math.prod(shape)
    dims = tensor_dims(tuple(shape), opts.et_max_dim)
    calls = sanitize_calls(numel) + [pointwise(numel, 1 + len(dims) + 1)]
    for i, d in enumerate(dims):
        calls.append(pointwise(d, 4))
        if i:
            calls.append(pointwise(math.prod(dims[: i + 1])))
    return calls + momentum_update_calls(numel, cfg.momentum, opts.nesterov, opts.weight_decay)


class ExtremeTensoringRule(MethodRule):
    """Per tensor: mode sums of G² into ``et_acc{i}``, the broadcast denominator, momentum and the step."""

    layout = staticmethod(layout)

    def step(self, opt, params, cfg, opts):
        states = [opt.state_for(p, cfg, opts) for p in params]
        for s in states:
            s["step"] += 1
        grads = opt.sanitize([p.grad for p in params], [s["nonfinite_skips"] for s in states],
                             states[0]["step"], opts)
        decay, weight = ema_weights(opts.betas[1])
        for p, grad, state in zip(params, grads, states):
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
            update = apply_momentum(state, (g / denom).reshape(p.shape), opts.betas[0], opts.nesterov)
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
