"""Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019, decoupled weight decay): the baseline.

m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  p ← p − η λ p − η (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε).

State (ALGORITHMS.md §1): ``exp_avg`` in the momentum dtype (float32 by default; bfloat16 halves it; ``none``
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


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    """Largest step temporary: the denominator √v̂ + ε, one param-shaped tensor in the state dtype."""
    return math.prod(shape) * dtype_bytes(opts.state_dtype)


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The elementwise passes of one AdamW step over this parameter (``_adamw_foreach``, after ``sanitize``).

    The finiteness sum, m's lerp, v's decay and g² accumulation, √v, bias correction, +ε and the addcdiv: eight
    passes with float32 momentum, seven without (the numerator is g); a bfloat16 m adds its cast for the lerp
    and the cast/divide/add of the mixed-dtype update. Weight decay adds one.
    """
    passes = 7 + {"float32": 1, "bfloat16": 5, "none": 0}[cfg.momentum] + (1 if opts.weight_decay else 0)
    return [pointwise(math.prod(shape), passes), pointwise(1)]
