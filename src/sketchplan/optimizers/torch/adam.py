"""AdamW in torch: torch's fused AdamW kernel where the dtypes allow it (``methods.adam.fused``: bit-identical to
``torch.optim.AdamW(fused=True)``), else multi-tensor (``torch._foreach_*``) kernels over a param group in the same
operation order as ``torch.optim.AdamW(foreach=True)``. The math, state layout, workspace and kernel calls are in
``methods.adam``.
"""

from __future__ import annotations

import torch

from ...methods.adam import chunks, fused, layout
from ...methods.common import bias_correction, ema_weights
from ...methods.layout import MethodConfig, OptimizerDefaults
from .base import MethodRule, SketchplanOptimizer, register


class AdamRule(MethodRule):
    """AdamW over a whole param group with multi-tensor (``torch._foreach_*``) kernels, in the same operation
    order as ``torch.optim.AdamW(foreach=True)``, one chunk of at most ``methods.adam.CHUNK_ELEMENTS`` elements at
    a time. No host synchronisation (see ``SketchplanOptimizer.sanitize``)."""

    layout = staticmethod(layout)

    def step(self, opt, params, cfg, opts):
        states, grads = self.begin(opt, params, cfg, opts)
        by_step: dict[int, list[int]] = {}
        for i, s in enumerate(states):
            by_step.setdefault(s["step"], []).append(i)
        for step, idx in by_step.items():
            for chunk in chunks([params[i].numel() for i in idx]):  # bounded temporaries (methods.adam.chunks)
                sel = [idx[j] for j in chunk]
                if _fused_available(params[sel[0]]) and fused(cfg, opts, [_dtype(params[i]) for i in sel]):
                    _adamw_fused([params[i] for i in sel], [grads[i] for i in sel], [states[i] for i in sel],
                                 step, opts)
                    continue
                _adamw_foreach([params[i] for i in sel], [grads[i] for i in sel], [states[i] for i in sel], step,
                               opts)


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _fused_available(p: torch.Tensor) -> bool:
    """torch ships the fused AdamW kernel for these devices (CPU since torch 2.4)."""
    return hasattr(torch, "_fused_adamw_") and p.device.type in ("cpu", "cuda", "mps")


def _adamw_fused(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], step: int,
                 opts: OptimizerDefaults) -> None:
    """One ``torch._fused_adamw_`` call over the chunk; its one temporary is the step count as a float32 scalar
    (``methods.adam.FUSED_STEP_BYTES``), which every tensor reads."""
    beta1, beta2 = opts.betas
    t = torch.full((), float(step), dtype=torch.float32, device=params[0].device)  # a fill: no host-to-device copy
    torch._fused_adamw_(params, grads, [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states], [], [t] * len(params), lr=opts.lr, beta1=beta1,
                        beta2=beta2, weight_decay=opts.weight_decay, eps=opts.eps, amsgrad=False, maximize=False)


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
            ``precondition_frequency``, the period of the deferred non-finite warning on accelerators, and
            ``nonfinite_guard``: the per-step read of every gradient that guards the state against NaN and Inf.
            Its default ``auto`` leaves it out of an all-Adam optimizer, which then has torch fused AdamW's speed
            and semantics; ``True`` adds it; a param group of a matrix method in the same optimizer turns
            ``auto`` on for every group).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: str = "float32", state_dtype: str = "float32", **options):
        cfg = MethodConfig(method="adam", momentum=momentum)
        opts = OptimizerDefaults(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, state_dtype=state_dtype,
                                 **options)
        super().__init__(params, cfg, opts)


register("adam", AdamRule())
