"""The step-time bound a plan honours by default, and the yardsticks its step time is shown against.

Default bound: the optimizer's amortised step may take at most ``DEFAULT_MAX_STEP_VS_ADAM`` = 3 times
all-Adam's predicted step on the same profile (``--max-step-vs-adam``; ``--time-budget-ms`` overrides it) or,
when the tokens (samples × positions) per training step are given (``--tokens-per-step``), at most
``DEFAULT_MAX_STEP_VS_FB`` = 25% of the predicted forward+backward, whichever is larger.

The yardstick is all-Adam as sketchplan builds it: with ``nonfinite_guard: auto`` an all-Adam optimizer skips the
guard's read of every gradient (torch's fused AdamW step and nothing else), while a plan that holds a matrix
method pays that read on every tensor, so it is part of the optimizer's extra time the bound limits.

Why a multiple of Adam, and why 3. Adam's step is an elementwise pass over ~16 bytes of state and parameters per
parameter; a training step's forward+backward is ≈ 6·N FLOPs per token (Kaplan et al. 2020), so for
language models at ordinary batch sizes Adam's step is a few percent of the training step, on GPUs and CPUs
alike. Three times Adam's step therefore keeps the optimizer's *extra* time at about twice that share, the
overhead range that the Distributed Shampoo report (Shi et al. 2023, "A Distributed Data-Parallel PyTorch
Implementation of the Distributed Shampoo Optimizer") accepts for its per-step wall-clock versus Adam. The
multiple needs no assumption about batch size or sequence length (the forward+backward estimate does), so it
is the bound; the forward+backward estimate is shown beside it for context (``forward_backward_ms``).

Why the forward+backward term. What a practitioner pays for is wall-clock to a loss: the optimizer's step competes
with the forward+backward, not with Adam's step. On small models (``benchmarks/results/autotune_value_adam_bound.md``: a
1M-parameter char-LM whose forward+backward is ~25× Adam's step) 3× Adam allowed almost no preconditioning, and
the plan was not better than AdamW at equal wall-clock. With the batch known, adding up to a quarter of the
forward+backward to each step is worth it when preconditioning saves more than a fifth of the steps, which the
Shampoo-family reports and our quality benchmark (``benchmarks/results/quality.md``) show on these tasks.
"""

from __future__ import annotations

import math

from ..methods.layout import MethodConfig

DEFAULT_MAX_STEP_VS_ADAM = 3.0
DEFAULT_MAX_STEP_VS_FB = 0.25
#: Tokens (or samples × positions) per training step assumed by the forward+backward yardstick.
DEFAULT_TOKENS_PER_STEP = 8192
ADAM = MethodConfig(method="adam")


def adam_step_ms(spec, timer) -> float:
    """All-Adam's predicted amortised step over the trainable tensors (ms), as an all-Adam optimizer runs it
    (the non-finite guard resolved for Adam alone: ``StepTimer.for_methods``)."""
    timer = timer.for_methods({ADAM.method})
    return sum(timer(p.shape, ADAM)[0] for p in spec.trainable)


def choose(spec, timer, time_budget_ms: float | None, max_step_vs_adam: float | None,
           tokens_per_step: int | None = None) -> tuple[float | None, str | None]:
    """(time budget in ms or None, where it came from). An explicit budget wins; else the default bound
    (module docstring) when a profile (``timer``) predicts times; else no bound."""
    if time_budget_ms is not None:
        return float(time_budget_ms), "--time-budget-ms"
    if timer is None or max_step_vs_adam is None or math.isinf(max_step_vs_adam):
        return None, None
    if max_step_vs_adam < 1:
        from ..errors import UserError

        raise UserError(f"--max-step-vs-adam {max_step_vs_adam:g} is below 1, faster than all-Adam; give a "
                        "multiple of at least 1 (or inf for no bound).")
    adam = adam_step_ms(spec, timer)
    bound = max_step_vs_adam * adam
    source = f"default: {max_step_vs_adam:g}x all-Adam's predicted step ({adam:.4g} ms)"
    if tokens_per_step:
        fb = forward_backward_ms(spec.n_trainable, timer.cost.profile, tokens_per_step)
        if fb is not None and DEFAULT_MAX_STEP_VS_FB * fb > bound:
            bound = DEFAULT_MAX_STEP_VS_FB * fb
            source = (f"default: {DEFAULT_MAX_STEP_VS_FB:.0%} of the predicted forward+backward at "
                      f"{tokens_per_step:,} tokens per step ({fb:.4g} ms)")
    return bound, source


def infeasible_message(budget_ms: float, source: str | None, min_ms: float) -> str:
    what = "--time-budget-ms" if source == "--time-budget-ms" else "--max-step-vs-adam"
    digits = 4
    while f"{budget_ms:.{digits}g}" == f"{min_ms:.{digits}g}" and digits < 17:  # never the same figure twice
        digits += 1
    have, want = f"{budget_ms:.{digits}g}", f"{min_ms:.{digits}g}"
    return (f"time budget {have} ms is below the fastest plan that fits the memory budget, "
            f"{want} ms predicted; raise {what} (at least {want} ms) or --memory-budget.")


def forward_backward_ms(n_trainable: int, profile, tokens: int = DEFAULT_TOKENS_PER_STEP) -> float | None:
    """Predicted forward+backward time of one training step: 6·N·tokens FLOPs at the profile's matrix-product
    rate (its roofline peak). A yardstick, not a measurement: attention and memory-bound layers are ignored."""
    if profile is None or not profile.roofline.peak_flops:
        return None
    return 6.0 * n_trainable * tokens / profile.roofline.peak_flops * 1e3
