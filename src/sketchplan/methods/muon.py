"""Muon (Jordan, Jin, Boza, You, Cesista, Newhouse & Bernstein 2024, "Muon: an optimizer for hidden layers in
neural networks"), as ``torch.optim.Muon`` defines it, with the update RMS matched to AdamW (Liu et al. 2025,
"Muon is scalable for LLM training").

Per matrix parameter viewed as (batch, m, n) — leading ``batch_dims`` axes index independent matrices (stacked
experts), the first remaining axis is m and the rest are flattened into n (a convolution kernel (o, i, h, w) is
the o × ihw matrix, as Keller Jordan's implementation does):
    B ← lerp(B, G, 1−μ);   U = lerp(G, B, μ) (Nesterov)
    O = NS₅(U):  X₀ = U / (‖U‖_F + 1e-7);   Xₖ₊₁ = a Xₖ + (b A + c A²) Xₖ, A = Xₖ Xₖᵀ   (on the short side)
    p ← p(1 − ηλ) − η · 0.2·√max(m, n) · O
with the published quintic coefficients (a, b, c) = (3.4445, −4.7750, 2.0315) and ``ns_steps`` = 5 iterations,
which map every singular value of X₀ that is ≥ 1.1e-3 into [0.5, 1.21] instead of exactly 1 (the scalar map
f(x) = ax + bx³ + cx⁵ applied five times; the published band is ``NS_BAND``; smaller ones, directions the
gradient barely has, grow by at most a⁵ ≈ 486). The iteration
runs in the state dtype (float32; the reference runs it in bfloat16 on GPUs).

Everything else — vectors, scalars, and whatever the planner keeps off Muon (embeddings and output heads, which
its authors train with AdamW: ``planner.structure``) — is AdamW inside the same method (``adam.layout``), so a
plan may name Muon for every tensor. State: the momentum ``momentum`` (momentum dtype; ``none`` drops it) and
the skip counter; on a non-matrix tensor Adam's ``exp_avg``, ``exp_avg_sq`` and counter.
Implementations: ``optimizers.torch.muon``, ``optimizers.jax.muon``; the kernel:
``kernels.torch.newton_schulz``, catalogued as ``newton_schulz(m, n, iters)``.
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, newton_schulz, pointwise
from . import adam
from .common import momentum_layout
from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .step_calls import momentum_update_calls, sanitize_calls

NAME = "muon"
MATRIX = False
#: Quality prior on a matrix: the share of Shampoo's full-matrix capture its orthogonalised momentum keeps
#: (Muon is Shampoo without accumulation, Bernstein & Newhouse 2024; ``planner.quality``); elsewhere it is Adam.
MATRIX_CAPTURE = 0.8
SCORE_FACTOR = 1.0
#: The published quintic coefficients and the Frobenius-normalisation ε (torch.optim.Muon's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
#: Where NS₅ puts the singular values of a matrix whose normalised singular values are ≥ 1.1e-3 (Jordan 2024:
#: "S' ~ Uniform(0.5, 1.5)"; ``tests/test_adafactor_lion_muon_compressed.py`` checks random matrices against it).
NS_BAND = (0.5, 1.5)


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries (besides momentum): none."""
    return [{}]


def matrix_view(shape: tuple[int, ...], batch_dims: int = 0) -> tuple[int, int, int] | None:
    """(batch, m, n) of the matrices Muon orthogonalises, or None when the tensor is no matrix (Adam)."""
    shape = tuple(shape)
    rest = shape[batch_dims:]
    if len(rest) < 2 or math.prod(shape) == 0:
        return None
    m, n = rest[0], math.prod(rest[1:])
    if m < 2 or n < 2:
        return None
    return math.prod(shape[:batch_dims]), m, n


def adam_config(cfg: MethodConfig) -> MethodConfig:
    """The AdamW configuration Muon uses on a tensor that is no matrix."""
    return MethodConfig(method="adam", momentum=cfg.momentum, compress=cfg.compress)


def update_scale(m: int, n: int) -> float:
    """0.2·√max(m, n): Muon's step relative to lr (torch.optim.Muon's ``match_rms_adamw``)."""
    return 0.2 * math.sqrt(max(m, n))


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors Muon allocates for one parameter."""
    if matrix_view(shape, cfg.batch_dims) is None:
        return adam.layout(shape, adam_config(cfg), opts)
    return momentum_layout(tuple(shape), cfg.momentum) + [SKIP_COUNTER]


def ns_transients(live, batch: int, m: int, n: int, iters: int, sb: int) -> int:
    """``kernels.torch.newton_schulz``: X₀ (a new tensor), per iteration A, bA + cA² and the next X while the
    previous X is alive; returns the bytes of the result it leaves alive."""
    m, n = min(m, n), max(m, n)
    live.spike(batch * 8)                  # the norms
    x = live.alloc(batch * m * n * sb)
    for _ in range(iters):
        a = live.alloc(batch * m * m * sb)
        b = live.alloc(batch * m * m * sb)
        nx = live.alloc(batch * m * n * sb)
        live.free(a + b + x)
        x = nx
    return x


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """High-water mark of one Muon step (``optimizers.torch.muon._step_param``): the gradient in the state dtype
    (a copy for other parameter dtypes), the momentum's float copy (bfloat16 buffer) and the Nesterov
    interpolation, Newton–Schulz (``ns_transients``), the copy that makes a transposed (m > n) result contiguous,
    and the update's cast. A tensor that is no matrix: Adam's."""
    view = matrix_view(shape, cfg.batch_dims)
    if view is None:
        return adam.workspace_bytes(shape, adam_config(cfg), opts, param_dtype, scratch)
    from .transients import Live

    sb, pb = dtype_bytes(opts.state_dtype), dtype_bytes(param_dtype)
    n_el = math.prod(shape)
    batch, m, n = view
    live = Live(scratch)
    live.alloc(16)
    g = live.alloc(n_el * sb) if pb != sb else 0
    held = 0
    mf = live.alloc(n_el * sb) if cfg.momentum not in ("none", opts.state_dtype) else 0  # m.to(state dtype)
    if cfg.momentum != "none":
        held += live.alloc(n_el * sb)      # lerp(g, m, μ)
    live.free(mf)
    x = ns_transients(live, batch, m, n, opts.ns_steps, sb)
    live.free(held)
    if m > n:
        live.alloc(n_el * sb)              # the transposed result made contiguous
        live.free(x)
    if pb != sb:
        live.spike(n_el * pb)
    return live.peak


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """Sanitize, momentum and its Nesterov interpolation, the normalisation, ``newton_schulz`` on the batch of
    matrices, the scaling and the update; a tensor that is no matrix: Adam's calls."""
    view = matrix_view(shape, cfg.batch_dims)
    if view is None:
        return adam.kernel_calls(shape, adam_config(cfg), opts)
    batch, m, n = view
    numel = math.prod(shape)
    return sanitize_calls(numel, opts) + [pointwise(numel, 3), newton_schulz(m, n, opts.ns_steps, batch)] + \
        momentum_update_calls(numel, cfg.momentum, True, opts.weight_decay)
