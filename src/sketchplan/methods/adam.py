"""Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019, decoupled weight decay): the baseline.

m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  p ← p − η λ p − η (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε).

State (docs/algorithms.md, Adam): ``exp_avg`` in the momentum dtype (float32 by default; bfloat16 halves it; ``none``
drops it, which is RMSProp with bias correction), ``exp_avg_sq`` in the state dtype, and the int32 counter of
skipped non-finite gradients. Implementations: ``optimizers.torch.adam``, ``optimizers.jax.adam``.
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, pointwise
from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes

NAME = "adam"
#: Whether the method preconditions with matrices (and so takes graft options): no, Adam is diagonal.
MATRIX = False
#: Quality: the share of the diagonal score (``planner.quality``) Adam keeps: all of it (it is the diagonal).
SCORE_FACTOR = 1.0


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries (besides momentum): none."""
    return [{}]


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors Adam allocates for one parameter of ``shape``."""
    out = []
    if cfg.momentum != "none":
        out.append(StateTensor("exp_avg", tuple(shape), cfg.momentum))
    out.append(StateTensor("exp_avg_sq", tuple(shape), opts.state_dtype))
    out.append(SKIP_COUNTER)
    return out


def fused(cfg: MethodConfig, opts: OptimizerDefaults, param_dtypes) -> bool:
    """Whether the torch step of a chunk runs torch's fused AdamW kernel (``torch._fused_adamw_``, the one
    ``torch.optim.AdamW(fused=True)`` calls: a single pass reading p, g, m, v and writing p, m, v, no
    temporaries): when the parameters, the momentum and v all have one dtype and β2 < 1 (the kernel's
    v ← β2 v + (1−β2) g² cannot express β2 = 1's running sum). Otherwise the step is the multi-tensor one."""
    return (cfg.momentum == opts.state_dtype and opts.betas[1] < 1
            and all(dt == opts.state_dtype for dt in param_dtypes))


#: Bytes of the fused step's only temporary: the step count as one float32 scalar tensor (every tensor of the
#: chunk reads the same one).
FUSED_STEP_BYTES = 4

#: The multi-tensor step runs over consecutive chunks of a param group holding at most this many elements (a
#: larger tensor is a chunk of its own), so its temporaries stay bounded whatever the group's size: at most
#: 14 bytes per element (bfloat16 parameters, float32 state) · 2²⁴ = 224 MiB, and the kernel launches of a
#: 7B-parameter model grow from ~8 to ~8·420 per step.
CHUNK_ELEMENTS = 2**24


def chunks(numels: list[int], limit: int = CHUNK_ELEMENTS) -> list[list[int]]:
    """Indices of the consecutive chunks ``_adamw_foreach`` steps together: greedy, each ≤ ``limit`` elements
    unless a single tensor is larger."""
    out: list[list[int]] = []
    size = 0
    for i, n in enumerate(numels):
        if out and size + n <= limit:
            out[-1].append(i)
            size += n
        else:
            out.append([i])
            size = n
    return out


def chunk_transients(tensors: list[tuple[int, str]], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    """High-water mark of one chunk's step over (numel, parameter dtype) tensors, in bytes: the fused kernel's
    step scalar (``fused``), or ``_adamw_foreach``'s temporaries:

    Gradients of another dtype than v are cast (kept); a momentum of another dtype gets the cast gradient
    (temporary); the denominators √v̂ + ε are one list; when parameter, numerator and denominator dtypes differ
    anywhere in the chunk, the update goes through the cast numerators (temporary), the quotients and their
    cast to the parameter dtype (temporary).
    """
    from .transients import Live

    if fused(cfg, opts, [dt for _, dt in tensors]):
        return FUSED_STEP_BYTES
    sb = dtype_bytes(opts.state_dtype)
    mb = dtype_bytes(cfg.momentum) if cfg.momentum != "none" else sb
    live = Live()
    n = sum(k for k, _ in tensors)
    g = live.alloc(sum(k * sb for k, dt in tensors if dt != opts.state_dtype))
    if cfg.momentum != "none" and cfg.momentum != opts.state_dtype:
        live.spike(n * mb)
    denom = live.alloc(n * sb)
    num_dtype = cfg.momentum if cfg.momentum != "none" else opts.state_dtype
    same = all(dt == num_dtype == opts.state_dtype for _, dt in tensors)
    if not same:
        casts = live.alloc(n * sb if num_dtype != opts.state_dtype else 0)
        upd = live.alloc(n * sb)
        live.free(casts)
        live.spike(sum(k * dtype_bytes(dt) for k, dt in tensors if dt != opts.state_dtype))
        live.free(upd)
    live.free(denom + g)
    return live.peak


def group_workspace_bytes(tensors: list[tuple[tuple[int, ...], str]], cfg: MethodConfig,
                          opts: OptimizerDefaults) -> int:
    """High-water mark of one AdamW step over a whole param group of (shape, parameter dtype) tensors, in the
    order the group holds them: the sanitising pass (a float32 norm per tensor and their stack: 8 bytes per tensor
    on CPU, 12 for a lone float64 gradient, counted as the 16 per tensor every method's replay allows) or the
    largest chunk's temporaries (``chunks``, ``chunk_transients``)."""
    numels = [math.prod(s) for s, _ in tensors]
    peak = 16 * len(tensors)
    for idx in chunks(numels):
        peak = max(peak, chunk_transients([(numels[i], tensors[i][1]) for i in idx], cfg, opts))
    return peak


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """The step's temporaries when this tensor is alone in its param group (a lower bound of the group's:
    ``group_workspace_bytes``, which the planner uses for the step)."""
    return group_workspace_bytes([(shape, param_dtype)], cfg, opts)


#: The fused kernel's cost in elementwise passes: it reads four and writes three arrays in one sweep, which on the
#: reference CPU took about as long as three of the profile's two-array passes (``torch.optim.AdamW(fused=True)``
#: 43.7 ms vs the eight-pass multi-tensor step's 87.3 ms on GPT-2 shapes, ``benchmarks/results/step_time.md``).
FUSED_PASSES = 3


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The elementwise passes of one AdamW step over this parameter, ``sanitize``'s guard read included.

    The guard (``nonfinite_guard``: ``True``, or ``auto`` before it is resolved for an optimizer: an all-Adam
    optimizer resolves it off, ``OptimizerDefaults.guard_runs``) reads the gradient once (its norm: a dot or its share of one
    ``torch._foreach_norm``) and adds the scalar work of the flags (stack, compare, the skip counter): one pass
    and a ``pointwise(1)``. Fused (``fused``, for parameters in the state dtype): the guard's pass and one kernel
    streaming seven parameter-sized arrays, counted as ``FUSED_PASSES`` passes. Multi-tensor
    (``_adamw_foreach``): the guard's pass, m's lerp, v's decay and g² accumulation, √v, bias correction, +ε and
    the addcdiv: eight passes with float32 momentum, seven without (the numerator is g); a bfloat16 m adds its
    cast for the lerp and the cast/divide/add of the mixed-dtype update. Weight decay adds one.
    """
    guard = 1 if opts.nonfinite_guard else 0
    if fused(cfg, opts, [opts.state_dtype]):
        return [pointwise(math.prod(shape), guard + FUSED_PASSES)] + [pointwise(1)] * guard
    passes = guard + 6 + {"float32": 1, "bfloat16": 5, "none": 0}[cfg.momentum] + (1 if opts.weight_decay else 0)
    return [pointwise(math.prod(shape), passes)] + [pointwise(1)] * guard
