"""The fitted cost model: kernel call → seconds, from a hardware profile.

Per kernel and variant the profile holds median times t_j of one problem at sizes with work x_j
(``kernels.calls.flops``). The model is a monotone piecewise-linear function in log-log space:

1. sort the points by log x and make log t non-decreasing by pooling adjacent violators (isotonic
   regression: more work never predicts less time);
2. inside [x_min, x_max] interpolate log t linearly in log x;
3. outside, use the roofline T(dims) = max(flops / peak, bytes / bandwidth) + overhead scaled to meet the
   nearest measured end: t = t_end · T(dims) / T(dims_end) above the range, t_min below it (a smaller problem
   is not faster than the smallest measured one). Such estimates are flagged ``extrapolated``;
4. shape: the FD update and the low-rank apply (``SHAPED``) run at a rate that depends on the shape, not only on
   the work — the same flops as (256, 256, 1024) took the low-rank apply 3.1 ms at
   (1024, 64, 1024) and twice that at k = 256, and step 1 pools the two. Inside the measured range the curve is
   corrected by the measured points' residuals r_j = log t_j − log curve(x_j), weighted by inverse squared
   distance in log-dims space over the ``SHAPE_NEIGHBOURS`` nearest points (a measured shape gets its own time
   back);
5. streamed kernels (``STREAMED``: the elementwise passes) cost at least ``n · t_N / N``, the per-element time of
   the largest measured size N: an optimizer step streams its state from memory (any model worth planning holds
   more state than the last-level cache), while the profile repeats one pass over the same small arrays, which
   then run from cache — on the reference CPU (32 MiB L3) a pass over 2¹⁸–2²⁰ floats took 0.08 ns per element,
   one over 2²⁴ floats 0.19 ns, and an AdamW step of 5.2 M parameters ran at the out-of-cache rate
   (``benchmarks/results/predict_vs_measure.md``).

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


#: Kernels that stream their operands from memory in an optimizer step (module docstring, 5.).
STREAMED = ("pointwise",)
#: Kernels whose curve is corrected by the residuals of nearby measured shapes (module docstring, 4.), and how
#: many of the nearest measured points are averaged. Matrix products are left to the monotone curve: their
#: rate follows the work (the grid's cubes and 1:3, 1:4 shapes), and a correction taken from a cube of another
#: size would undo the pooling of step 1.
SHAPED = ("fd_update", "lowrank_apply")
SHAPE_NEIGHBOURS = 4


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
        self.rate_hi = math.exp(pts[-1][1] - pts[-1][0])  # seconds per unit of work at the largest size
        # residuals of the measured shapes against the pooled curve (step 4), for the SHAPED kernels
        self.shapes = [([math.log(v) for v in dims], lt - math.log(self(lx))) for lx, lt, dims in pts] \
            if kernel in SHAPED else []
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

    def shape_residual(self, dims: tuple[int, ...]) -> float:
        """log of the measured/curve ratio at ``dims`` from its nearest measured shapes (module docstring, 4.)."""
        if not self.shapes:
            return 0.0
        ld = [math.log(v) for v in dims]
        near = sorted((sum((a - b) ** 2 for a, b in zip(ld, pd)), r) for pd, r in self.shapes)[:SHAPE_NEIGHBOURS]
        if near[0][0] < 1e-12:
            return near[0][1]
        weights = [1.0 / d2 for d2, _ in near]
        return sum(w * r for w, (_, r) in zip(weights, near)) / sum(weights)


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

    def problem(self, kernel: str, variant: str, dims: tuple[int, ...], in_step: bool = True) -> Estimate:
        """Seconds of one problem of size ``dims`` in an optimizer step; ``in_step=False``: as the profile's
        harness times it, repeated on the same arrays (no streaming floor, module docstring 5.: what
        ``profiles.calibrate`` compares a new measurement with)."""
        key = (kernel, variant, dims, in_step)
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
                t = curve(lx) * math.exp(curve.shape_residual(dims))
                if in_step and kernel in STREAMED:
                    t = max(t, curve.rate_hi * math.exp(lx))
                est = Estimate(t, variant, lx < curve.lx_lo - 1e-9)
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
