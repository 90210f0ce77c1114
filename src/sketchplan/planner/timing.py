"""Predicted optimizer step time per tensor and the fastest kernel variants, from a hardware profile.

For a tensor of shape s under a method config c, the method's own declaration
``optimizers.<method>.kernel_calls(s, c, defaults)`` lists the kernel calls of one step; the profile's cost
model (``profiles.CostModel``) times each and amortises it over its period:

    step_ms(s, c) = Σ_calls batch · t_kernel,variant(dims) / every

For kernels with interchangeable variants (FD update, inverse root) the variant with the least amortised time
over the tensor's calls is recorded (``TensorEntry.variant``) and the optimizer runs it. Each distinct
(shape, config) is evaluated once, so planning time grows with distinct shapes, not tensors.
"""

from __future__ import annotations

from ..kernels.calls import VARIANT_OPTIONS
from ..methods import kernel_calls
from ..methods.layout import MethodConfig, OptimizerDefaults
from ..profiles.cost import CostModel


class StepTimer:
    """Cached (step ms, variant picks) per (shape, config) under one cost model and one set of defaults."""

    def __init__(self, cost: CostModel, opts: OptimizerDefaults):
        self.cost = cost
        self.opts = opts
        self.defaults = {k: getattr(opts, f) for k, f in VARIANT_OPTIONS.items()}
        self._cache: dict[tuple, tuple[float, dict[str, str]]] = {}
        self._resolved: dict[bool, StepTimer] = {}  # for_methods' timers, one per resolved guard (caches kept)

    def for_methods(self, methods) -> "StepTimer":
        """This timer with the non-finite guard resolved for an optimizer over ``methods``
        (``OptimizerDefaults.guard_runs``: ``auto`` runs it only beside a matrix method). While the solver
        compares candidates the guard of ``auto`` is counted (a plan with a matrix method runs it on every
        tensor); the chosen plan's entries, its all-Adam baseline and its what-ifs are timed resolved."""
        opts = self.opts.with_guard_for(methods)
        if opts is self.opts:
            return self
        if opts.nonfinite_guard not in self._resolved:
            self._resolved[opts.nonfinite_guard] = StepTimer(self.cost, opts)
        return self._resolved[opts.nonfinite_guard]

    def __call__(self, shape: tuple[int, ...], cfg: MethodConfig) -> tuple[float, dict[str, str]]:
        if any(d == 0 for d in shape):
            cfg = MethodConfig(method="adam")  # a tensor without elements gets Adam (planner.candidates)
        key = (shape, cfg)
        hit = self._cache.get(key)
        if hit is None:
            calls = kernel_calls(shape, cfg, self.opts)
            seconds, picks = self.cost.step(calls, self.defaults)
            hit = self._cache[key] = (seconds * 1e3, picks)
        return hit
