"""Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019, decoupled weight decay): the baseline.

m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  p ← p − η λ p − η (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε).

State (ALGORITHMS.md §1): ``exp_avg`` in the momentum dtype (float32 by default; bfloat16 halves it; ``none``
drops it, which is RMSProp with bias correction), ``exp_avg_sq`` in the state dtype, and the int32 counter of
skipped non-finite gradients.
"""

from __future__ import annotations

import math

import torch

from ..kernels.calls import KernelCall, pointwise
from .base import MethodRule, SketchplanOptimizer, register
from .common import bias_correction, ema_weights
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


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """The elementwise passes of one AdamW step over this parameter (``_adamw_foreach``, after ``sanitize``).

    The finiteness sum, m's lerp, v's decay and g² accumulation, √v, bias correction, +ε and the addcdiv: eight
    passes with float32 momentum, seven without (the numerator is g); a bfloat16 m adds its cast for the lerp
    and the cast/divide/add of the mixed-dtype update. Weight decay adds one.
    """
    passes = 7 + {"float32": 1, "bfloat16": 5, "none": 0}[cfg.momentum] + (1 if opts.weight_decay else 0)
    return [pointwise(math.prod(shape), passes), pointwise(1)]


class AdamRule(MethodRule):
    """AdamW over a whole param group with multi-tensor (``torch._foreach_*``) kernels, in the same operation
    order as ``torch.optim.AdamW(foreach=True)``. No host synchronisation (see ``SketchplanOptimizer.sanitize``)."""

    layout = staticmethod(layout)

    def step(self, opt, params, cfg, opts):
        states = [opt.state_for(p, cfg, opts) for p in params]
        for s in states:
            s["step"] += 1
        by_step: dict[int, list[int]] = {}
        for i, s in enumerate(states):
            by_step.setdefault(s["step"], []).append(i)
        grads = opt.sanitize([p.grad for p in params], [s["nonfinite_skips"] for s in states],
                             states[0]["step"], opts)
        for step, idx in by_step.items():
            _adamw_foreach([params[i] for i in idx], [grads[i] for i in idx], [states[i] for i in idx], step, opts)


def _adamw_foreach(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], step: int,
                   opts: OptimizerDefaults) -> None:
    beta1, beta2 = opts.betas
    lr = opts.lr
    v = [s["exp_avg_sq"] for s in states]
    m = [s["exp_avg"] for s in states] if "exp_avg" in states[0] else None
    g = [x if x.dtype == y.dtype else x.to(y.dtype) for x, y in zip(grads, v)]
    if opts.weight_decay:
        torch._foreach_mul_(params, 1 - lr * opts.weight_decay)
    if m is not None:
        torch._foreach_lerp_(m, [x if x.dtype == y.dtype else x.to(y.dtype) for x, y in zip(g, m)], 1 - beta1)
    decay, weight = ema_weights(beta2)
    torch._foreach_mul_(v, decay)
    torch._foreach_addcmul_(v, g, g, weight)
    step_size = lr / (1 - beta1**step if m is not None else 1.0)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bias_correction(beta2, step) ** 0.5)
    torch._foreach_add_(denom, opts.eps)
    num = m if m is not None else g
    if all(p.dtype == n.dtype == d.dtype for p, n, d in zip(params, num, denom)):
        torch._foreach_addcdiv_(params, num, denom, -step_size)
    else:
        upd = torch._foreach_div([n.to(d.dtype) for n, d in zip(num, denom)], denom)
        torch._foreach_add_(params, [u.to(p.dtype) for u, p in zip(upd, params)], alpha=-step_size)


class Adam(SketchplanOptimizer):
    """sketchplan's AdamW (Kingma & Ba 2015, "Adam: a method for stochastic optimization"; Loshchilov & Hutter
    2019, "Decoupled weight decay regularization"); matches ``torch.optim.AdamW`` numerically.

        p ← p(1 − ηλ);  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²
        p ← p − η/(1−β1ᵗ) · m / (√(v/(1−β2ᵗ)) + ε)

    With β2 = 1, v is a running sum of g² without bias correction (AdaGrad with momentum).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate η.
        betas: (β1, β2).
        eps: ε added to the denominator.
        weight_decay: decoupled weight decay λ (0 by default, unlike torch's AdamW default of 0.01).
        momentum: dtype of the first moment m: ``float32``, ``bfloat16`` (halves its memory) or ``none``
            (no m: RMSProp with bias correction).
        state_dtype: dtype of v (``float32``, ``float64`` or ``bfloat16``).
        **options: any other ``OptimizerDefaults`` field (they do not affect Adam except
            ``precondition_frequency``, the period of the deferred non-finite warning on accelerators).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: str = "float32", state_dtype: str = "float32", **options):
        cfg = MethodConfig(method="adam", momentum=momentum)
        opts = OptimizerDefaults(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, state_dtype=state_dtype,
                                 **options)
        super().__init__(params, cfg, opts)


register("adam", AdamRule())
