"""The fitted cost model: kernel call → seconds, from a hardware profile.

Per kernel and variant the profile holds median times t_j of one problem at sizes with work x_j
(``kernels.calls.flops``). The model is a monotone piecewise-linear function in log-log space:

1. sort the points by log x and make log t non-decreasing by pooling adjacent violators (isotonic
   regression: more work never predicts less time);
2. inside [x_min, x_max] interpolate log t linearly in log x;
3. outside, use the roofline T(dims) = max(flops / peak, bytes / bandwidth) + overhead scaled to meet the
   nearest measured end: t = t_end · T(dims) / T(dims_end) above the range, t_min below it (a smaller problem
   is not faster than the smallest measured one). Such estimates are flagged ``extrapolated``.

A call of ``batch`` problems costs ``batch`` times one problem (batched CPU kernels loop over the batch; on
accelerators this overestimates small batched problems). A kernel whose variant has no table is timed by the
roofline alone (``analytic``), derated by ``ANALYTIC_EFFICIENCY`` (eigh and SVD reach a fraction of the
matrix-product peak).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

from ..kernels.calls import KERNEL_VARIANTS, PLANNED_VARIANTS, KernelCall, bytes_moved, flops
from .schema import HardwareProfile, KernelTable

#: Fraction of the matrix-product peak each kernel reaches when nothing was measured (analytic fallback).
ANALYTIC_EFFICIENCY = {"gemm": 0.7, "inv_root": 0.1, "fd_update": 0.15, "lowrank_apply": 0.5, "pointwise": 1.0,
                       "newton_schulz": 0.6}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    variant: str
    extrapolated: bool = False
    analytic: bool = False


class _Curve:
    """Monotone log-log interpolant of one kernel variant's table."""

    def __init__(self, kernel: str, table: KernelTable):
        pts = sorted((math.log(flops(kernel, table.variant, tuple(p.dims))), math.log(p.seconds), tuple(p.dims))
                     for p in table.points)
        # pool adjacent violators on log t (weights = number of points pooled)
        blocks: list[list] = []  # [sum_x, sum_t, n, dims_of_last]
        for lx, lt, dims in pts:
            blocks.append([lx, lt, 1, dims])
            while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
                b = blocks.pop()
                a = blocks[-1]
                a[0] += b[0]
                a[1] += b[1]
                a[2] += b[2]
                a[3] = b[3]
        self.lx = [b[0] / b[2] for b in blocks]
        self.lt = [b[1] / b[2] for b in blocks]
        self.lo_dims = pts[0][2]
        self.hi_dims = pts[-1][2]
        self.lx_lo, self.lx_hi = pts[0][0], pts[-1][0]

    def __call__(self, lx: float) -> float:
        xs, ts = self.lx, self.lt
        if len(xs) == 1 or lx <= xs[0]:
            return math.exp(ts[0])
        if lx >= xs[-1]:
            return math.exp(ts[-1])
        i = bisect_left(xs, lx)
        f = (lx - xs[i - 1]) / (xs[i] - xs[i - 1])
        return math.exp(ts[i - 1] + f * (ts[i] - ts[i - 1]))


class CostModel:
    """Seconds of kernel calls on the profiled device (module docstring)."""

    def __init__(self, profile: HardwareProfile):
        self.profile = profile
        self._curves = {(t.kernel, t.variant): _Curve(t.kernel, t) for t in profile.tables if t.points}
        self._cache: dict[tuple, Estimate] = {}
        self._amortised: dict[tuple[KernelCall, str | None], float] = {}
        self._steps: dict[tuple, tuple[float, dict[str, str]]] = {}  # ``step`` by its calls (grids repeat them)
        self._variants: dict[str, tuple[str, ...]] = {}

    def roofline(self, kernel: str, variant: str, dims: tuple[int, ...]) -> float:
        r = self.profile.roofline
        eff = ANALYTIC_EFFICIENCY.get(kernel, 1.0)
        return max(flops(kernel, variant, dims) / (r.peak_flops * eff), bytes_moved(kernel, dims) / r.bandwidth) \
            + r.overhead_s

    def variants(self, kernel: str) -> tuple[str, ...]:
        """Variants with a measured table (all of the kernel's variants when none is measured)."""
        hit = self._variants.get(kernel)
        if hit is None:
            measured = tuple(v for v in KERNEL_VARIANTS[kernel] if (kernel, v) in self._curves)
            hit = self._variants[kernel] = measured or KERNEL_VARIANTS[kernel]
        return hit

    def problem(self, kernel: str, variant: str, dims: tuple[int, ...]) -> Estimate:
        """Seconds of one problem of size ``dims``."""
        key = (kernel, variant, dims)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        curve = self._curves.get((kernel, variant))
        if curve is None:
            est = Estimate(self.roofline(kernel, variant, dims), variant, True, True)
        else:
            lx = math.log(max(flops(kernel, variant, dims), 1e-30))
            if lx > curve.lx_hi + 1e-9:
                t = curve(curve.lx_hi) * self.roofline(kernel, variant, dims) / \
                    self.roofline(kernel, variant, curve.hi_dims)
                est = Estimate(t, variant, True)
            else:
                est = Estimate(curve(lx), variant, lx < curve.lx_lo - 1e-9)
        self._cache[key] = est
        return est

    def call(self, c: KernelCall, variant: str | None = None) -> Estimate:
        """Seconds of one call (``batch`` problems), not amortised over ``c.every``."""
        v = c.variant or variant or self.variants(c.kernel)[0]
        est = self.problem(c.kernel, v, c.dims)
        return Estimate(est.seconds * c.batch, v, est.extrapolated, est.analytic)

    def _per_step(self, c: KernelCall, variant: str | None = None) -> float:
        """``call(c, variant).seconds / c.every``, remembered per (call, variant): a planner grid repeats the
        same calls (the graft's, the momentum's, one FD update) across thousands of configurations."""
        key = (c, variant)
        hit = self._amortised.get(key)
        if hit is None:
            hit = self._amortised[key] = self.call(c, variant).seconds / c.every
        return hit

    def step(self, calls: list[KernelCall], defaults: dict[str, str] | None = None) -> tuple[float, dict[str, str]]:
        """Amortised seconds per step of ``calls`` and the fastest variant per selectable kernel.

        For each kernel with several variants, the one variant (an optimizer option applies to the whole tensor)
        that minimises that kernel's amortised time over all its calls. Kernels the profile cannot compare (no
        measured table) get no pick and are timed with ``defaults[kernel]`` (or the first variant). Remembered by
        the calls: a planner grid gives many configurations the same ones (momentum and graft variants of a rank).
        """
        key = (tuple(calls), tuple(sorted(defaults.items())) if defaults else ())
        hit = self._steps.get(key)
        if hit is None:
            hit = self._steps[key] = self._step(calls, defaults)
        return hit[0], dict(hit[1])

    def _step(self, calls: list[KernelCall], defaults: dict[str, str] | None) -> tuple[float, dict[str, str]]:
        total = 0.0
        picks: dict[str, str] = {}
        by_kernel: dict[str, list[KernelCall]] = {}
        for c in calls:
            if c.variant is None and len(KERNEL_VARIANTS[c.kernel]) > 1:
                by_kernel.setdefault(c.kernel, []).append(c)
            else:
                total += self._per_step(c)
        for kernel, cs in by_kernel.items():
            allowed = PLANNED_VARIANTS.get(kernel, KERNEL_VARIANTS[kernel])
            options = [v for v in allowed if (kernel, v) in self._curves]
            if options:
                best = min(options, key=lambda v: sum(self._per_step(c, v) for c in cs))
                picks[kernel] = best
            else:  # nothing measured to compare: the optimizer's own choice, timed by the roofline
                default = (defaults or {}).get(kernel)
                best = default if default in KERNEL_VARIANTS[kernel] else KERNEL_VARIANTS[kernel][0]
            total += sum(self._per_step(c, best) for c in cs)
        return total, picks
