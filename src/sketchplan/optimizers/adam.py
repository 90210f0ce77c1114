"""Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019, decoupled weight decay): the baseline.

m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  p ← p − η λ p − η (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε).

State (ALGORITHMS.md §1): ``exp_avg`` in the momentum dtype (float32 by default; bfloat16 halves it; ``none``
drops it, which is RMSProp with bias correction), ``exp_avg_sq`` in the state dtype, and the int32 counter of
skipped non-finite gradients.
"""

from __future__ import annotations

import math

from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes


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
