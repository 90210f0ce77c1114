"""The step-time bound a plan honours by default, and the yardsticks its step time is shown against.

Default bound: the optimizer's amortised step may take at most ``DEFAULT_MAX_STEP_VS_ADAM`` = 3 times
all-Adam's predicted step on the same profile (``--max-step-vs-adam``; ``--time-budget-ms`` overrides it).

Why a multiple of Adam, and why 3. Adam's step is an elementwise pass over ~16 bytes of state and parameters per
parameter; a training step's forward+backward is ≈ 6·N FLOPs per token (Kaplan et al. 2020), so for
language models at ordinary batch sizes Adam's step is a few percent of the training step, on GPUs and CPUs
alike. Three times Adam's step therefore keeps the optimizer's *extra* time at about twice that share, the
overhead range that the Distributed Shampoo report (Shi et al. 2023, "A Distributed Data-Parallel PyTorch
Implementation of the Distributed Shampoo Optimizer") accepts for its per-step wall-clock versus Adam. The
multiple needs no assumption about batch size or sequence length (the forward+backward estimate does), so it
is the bound; the forward+backward estimate is shown beside it for context (``forward_backward_ms``).
"""

from __future__ import annotations

import math

from ..methods.layout import MethodConfig

DEFAULT_MAX_STEP_VS_ADAM = 3.0
#: Tokens (or samples × positions) per training step assumed by the forward+backward yardstick.
DEFAULT_TOKENS_PER_STEP = 8192
ADAM = MethodConfig(method="adam")


def adam_step_ms(spec, timer) -> float:
    """All-Adam's predicted amortised step over the trainable tensors (ms)."""
    return sum(timer(p.shape, ADAM)[0] for p in spec.trainable)


def choose(spec, timer, time_budget_ms: float | None, max_step_vs_adam: float | None) -> tuple[float | None, str | None]:
    """(time budget in ms or None, where it came from). An explicit budget wins; else the default multiple of
    all-Adam's step when a profile (``timer``) predicts times; else no bound."""
    if time_budget_ms is not None:
        return float(time_budget_ms), "--time-budget-ms"
    if timer is None or max_step_vs_adam is None or math.isinf(max_step_vs_adam):
        return None, None
    if max_step_vs_adam < 1:
        from ..errors import UserError

        raise UserError(f"--max-step-vs-adam {max_step_vs_adam:g} is below 1, faster than all-Adam; give a "
                        "multiple of at least 1 (or inf for no bound).")
    adam = adam_step_ms(spec, timer)
    return max_step_vs_adam * adam, f"default: {max_step_vs_adam:g}× all-Adam's predicted step ({adam:.4g} ms)"


def infeasible_message(budget_ms: float, source: str | None, min_ms: float) -> str:
    what = "--time-budget-ms" if source == "--time-budget-ms" else "--max-step-vs-adam"
    return (f"time budget {budget_ms:.4g} ms is below the fastest plan that fits the memory budget, "
            f"{min_ms:.4g} ms predicted; raise {what} (at least {min_ms:.4g} ms) or --memory-budget.")


def forward_backward_ms(n_trainable: int, profile, tokens: int = DEFAULT_TOKENS_PER_STEP) -> float | None:
    """Predicted forward+backward time of one training step: 6·N·tokens FLOPs at the profile's matrix-product
    rate (its roofline peak). A yardstick, not a measurement: attention and memory-bound layers are ignored."""
    if profile is None or not profile.roofline.peak_flops:
        return None
    return 6.0 * n_trainable * tokens / profile.roofline.peak_flops * 1e3
