"""Lion (Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh, Lu & Le 2023, "Symbolic discovery of
optimization algorithms", NeurIPS): one momentum, a sign update.

    c = β1 m + (1−β1) g;   D = sign(c);   m ← β2 m + (1−β2) g
    p ← p(1 − ηλ) − η' D,   η' = η · ``lion_lr_ratio``

(β1, β2) = ``opts.lion_betas`` (0.9, 0.99 as published); the paper's advice that Lion's learning rate be 3–10×
smaller than AdamW's is ``lion_lr_ratio`` (0.3), so a plan's one ``lr`` serves both. Without momentum
(``momentum="none"``) D = sign(g) (signSGD). State: ``momentum`` in the momentum dtype and the skip counter.
Implementations: ``optimizers.torch.lion``, ``optimizers.jax.lion`` (also checked against ``optax.lion``).
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall
from .common import momentum_layout
from .layout import SKIP_COUNTER, MethodConfig, OptimizerDefaults, StateTensor, dtype_bytes
from .step_calls import momentum_update_calls, sanitize_calls

NAME = "lion"
MATRIX = False
#: Quality prior: 0.9 of the diagonal score (a sign update keeps no per-coordinate scale; ``planner.quality``).
SCORE_FACTOR = 0.9


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries (besides momentum): none."""
    return [{}]


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors Lion allocates for one parameter: the momentum and the skip counter."""
    return momentum_layout(tuple(shape), cfg.momentum) + [SKIP_COUNTER]


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """High-water mark of one Lion step over this parameter (``optimizers.torch.lion._step_param``): the
    gradient in the state dtype (a copy for other parameter dtypes), a float copy of a bfloat16 momentum, the
    interpolation c (its sign in place), then the update's cast to the parameter dtype."""
    from .transients import Live

    sb, pb = dtype_bytes(opts.state_dtype), dtype_bytes(param_dtype)
    n = math.prod(shape)
    live = Live(scratch)
    live.alloc(16)                                   # the sanitising pass's scalars
    g = live.alloc(n * sb) if pb != sb else 0
    mf = live.alloc(n * sb) if cfg.momentum not in ("none", opts.state_dtype) else 0
    c = live.alloc(n * sb)                           # lerp(m, g, 1−β1) (or g.sign())
    live.free(mf)
    if pb != sb:
        live.spike(n * pb)
    live.free(c + g)
    return live.peak


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """Sanitize, the interpolation and its sign (two passes), the momentum update and the step."""
    numel = math.prod(shape)
    return sanitize_calls(numel, opts) + [KernelCall("pointwise", (max(1, numel),), 2)] + \
        momentum_update_calls(numel, cfg.momentum, False, opts.weight_decay)
