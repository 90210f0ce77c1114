"""``sketchplan profile``: micro-benchmarks of every kernel variant over a size grid → a ``HardwareProfile``.

For each kernel and variant (``kernels.calls.KERNEL_VARIANTS``) and each size of its grid, in increasing
order of work: build random inputs (never zeros: statistics are Gram matrices of Gaussian columns, sketches
have orthonormal bases and positive spectra), warm up, time repetitions (``kernels.timing``) and keep the
median. A size whose time, extrapolated from the largest size measured so far, would exceed the per-point cap
is skipped (``--quick``: small grid, 0.4 s cap), so the run time is bounded on slow devices. A variant whose
result disagrees with the reference (a coupled Newton iteration that did not converge returns the previous
root, i.e. a different answer) is not recorded: the planner may only pick variants that compute the same thing
(or, for the FD update's approximate ``subspace`` variant, the same thing within its stated contract).
The roofline constants are fitted from the same points (best matrix-product FLOP/s, best elementwise bandwidth,
smallest call time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..kernels.calls import KERNEL_VARIANTS, bytes_moved, flops
from ..kernels.timing import jax_runner, median_seconds, torch_runner
from .fingerprint import detect, parse_device, profile_name
from .schema import HardwareProfile, KernelTable, Point, ProfileNoise, Roofline


@dataclass(frozen=True)
class GridSpec:
    dims: dict[str, list[tuple[int, ...]]]
    cap_s: float  # skip a size predicted to take longer than this per call
    budget_s: float  # timing budget per size (repetitions stop after it, min 3)


def _fd_dims(ds, ks, ratios, vectors: bool = False) -> list[tuple[int, ...]]:
    """(d, k, n) with n = d·r for each ratio, and n = 1 (a vector's sketch, where ``subspace`` takes its exact
    path at a rate the matrix-shaped points do not show) when ``vectors``."""
    dims = {(d, k, max(1, int(d * r))) for d in ds for k in ks if k < d for r in ratios}
    if vectors:
        dims |= {(d, k, 1) for d in ds for k in ks if k < d}
    return sorted(dims)


def grid(quick: bool) -> GridSpec:
    """The sizes measured per kernel (the same for every variant of a kernel)."""
    if quick:
        sq = (32, 128, 512, 1024, 2048)
        return GridSpec({
            "gemm": sorted({s for d in sq for s in ((d, d, d), (d, d, 4 * d), (d, 4 * d, d))}),
            "inv_root": [(d,) for d in (16, 64, 128, 256, 512, 768, 1024, 1536)],
            "fd_update": _fd_dims((64, 256, 768, 1024), (16, 64, 256), (0.25, 1, 4), vectors=True),
            "lowrank_apply": _fd_dims((128, 512, 2048), (16, 128), (0.25, 1, 4)),
            "pointwise": [(4**j,) for j in range(0, 12)],
            "newton_schulz": [(m, 4 * m, 5) for m in (32, 128, 512)] + [(m, m, 5) for m in (64, 256, 1024)],
        }, cap_s=0.4, budget_s=0.15)
    sq = (16, 64, 256, 512, 768, 1024, 2048, 3072)
    return GridSpec({
        "gemm": sorted({s for d in sq for s in ((d, d, d), (d, d, 3 * d), (d, 3 * d, d), (d, d, 4 * d),
                                                (d, 4 * d, d))}),
        "inv_root": [(d,) for d in (8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 2304, 3072)],
        "fd_update": _fd_dims((64, 128, 256, 512, 768, 1024, 2048, 3072), (16, 64, 256), (0.25, 1, 3, 4),
                              vectors=True),
        "lowrank_apply": _fd_dims((64, 256, 768, 1024, 2048, 3072), (16, 64, 256), (0.25, 1, 4)),
        "pointwise": [(4**j,) for j in range(0, 13)],
        "newton_schulz": sorted({(m, r * m, 5) for m in (16, 64, 256, 512, 768, 1024, 2048) for r in (1, 3, 4)}),
    }, cap_s=3.0, budget_s=0.3)


# ---- inputs and calls per framework ----

def _torch_problem(kernel: str, variant: str, dims: tuple[int, ...], device: str):
    """(call, check) for one problem: ``check()`` is True when the variant computed the reference answer."""
    import torch

    from ..kernels.torch.frequent_directions import fd_update
    from ..kernels.torch.lowrank import lowrank_root_apply
    from ..kernels.torch.roots import inverse_root_newton, symmetric_power

    gen = torch.Generator().manual_seed(hash(dims) % 2**31)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    ok = lambda: True  # noqa: E731
    if kernel == "gemm":
        m, n, k = dims
        a, b = randn(1, m, k), randn(1, k, n)
        return (lambda: torch.bmm(a, b)), ok
    if kernel == "inv_root":
        (d,) = dims
        g = randn(1, d, 2 * d)
        s = g @ g.mT / (2 * d)
        if variant == "eigh":
            return (lambda: symmetric_power(s, -0.25, 1e-12)), ok
        ref = symmetric_power(s.double(), -0.25, 1e-12)

        def check() -> bool:
            got = inverse_root_newton(s, 4, 1e-12).double()
            return float(torch.linalg.matrix_norm(got - ref).max() / torch.linalg.matrix_norm(ref).max()) < 1e-2
        return (lambda: inverse_root_newton(s, 4, 1e-12)), check
    if kernel in ("fd_update", "lowrank_apply"):
        d, k, n = dims
        u = torch.linalg.qr(randn(1, d, k))[0]
        sig2 = torch.rand(1, k, generator=gen).to(device).sort(descending=True).values + 0.1
        rho = torch.full((1,), 0.01, device=device)
        x = randn(1, d, n)
        if kernel == "fd_update":
            return (lambda: fd_update(u, sig2, rho, x, 0.999, variant)), ok
        return (lambda: lowrank_root_apply(u, sig2, rho, x, -0.25, 1e-12)), ok
    if kernel == "newton_schulz":
        from ..kernels.torch.newton_schulz import newton_schulz

        m, n, iters = dims
        g = randn(1, m, n)
        return (lambda: newton_schulz(g, iters)), ok
    (n,) = dims
    a, b = randn(n), randn(n)
    return (lambda: a.lerp_(b, 0.1)), ok


def _jax_problem(kernel: str, variant: str, dims: tuple[int, ...], device: str):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ..kernels.jax import frequent_directions as jfd
    from ..kernels.jax import lowrank as jax_lowrank
    from ..kernels.jax import products as jax_products
    from ..kernels.jax import roots as jax_roots

    rng = np.random.default_rng(hash(dims) % 2**31)

    def randn(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    ok = lambda: True  # noqa: E731
    if kernel == "gemm":
        m, n, k = dims
        a, b = randn(1, m, k), randn(1, k, n)
        return (lambda: jax_products.factor_apply(a, b)), ok
    if kernel == "inv_root":
        (d,) = dims
        g = randn(1, d, 2 * d)
        s = g @ jnp.swapaxes(g, -1, -2) / (2 * d)
        if variant == "eigh":
            return (lambda: jax_roots.symmetric_power(s, -0.25, 1e-12)), ok
        ref = np.asarray(jax_roots.symmetric_power(s, -0.25, 1e-12), np.float64)

        def check() -> bool:
            got = np.asarray(jax_roots.inverse_root_newton(s, 4, 1e-12), np.float64)
            return float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) < 1e-2
        return (lambda: jax_roots.inverse_root_newton(s, 4, 1e-12)), check
    if kernel in ("fd_update", "lowrank_apply"):
        d, k, n = dims
        u = jnp.asarray(np.linalg.qr(rng.standard_normal((1, d, k)))[0], jnp.float32)
        sig2 = jnp.asarray(np.sort(rng.uniform(0.1, 1.1, (1, k)))[:, ::-1].copy(), jnp.float32)
        rho = jnp.full((1,), 0.01, jnp.float32)
        x = randn(1, d, n)
        if kernel == "fd_update":
            return (lambda: jfd.fd_update(u, sig2, rho, x, 0.999, variant)), ok
        return (lambda: jax_lowrank.lowrank_root_apply(u, sig2, rho, x, -0.25, 1e-12)), ok
    if kernel == "newton_schulz":
        from ..kernels.jax.newton_schulz import newton_schulz

        m, n, iters = dims
        g = randn(1, m, n)
        ns = jax.jit(lambda x: newton_schulz(x, iters))
        return (lambda: ns(g)), ok
    (n,) = dims
    a, b = randn(n), randn(n)
    lerp = jax.jit(lambda a, b: a + 0.1 * (b - a))
    return (lambda: lerp(a, b)), ok


# ---- the run ----

def measure_profile(device: str = "cpu", framework: str = "torch", quick: bool = False,
                    progress: Callable[[str, int], None] | None = None, name: str | None = None,
                    only: tuple[str, ...] | None = None) -> HardwareProfile:
    """Measure every kernel variant on ``device`` with ``framework``; see the module docstring.

    ``progress(description, total)`` is called before each size (``total`` = number of sizes in all).
    ``only`` restricts the kernels measured (tests, partial refreshes).
    """
    kind, _ = parse_device(device)
    if kind == "tpu" and framework != "jax":
        raise UserError("TPUs are profiled with --framework jax.")
    info = detect(device, framework)
    spec = grid(quick)
    if framework == "jax":
        make = _jax_problem
        runner = lambda fn: jax_runner(fn)  # noqa: E731
    else:
        make = _torch_problem
        runner = lambda fn: torch_runner(fn, device)  # noqa: E731
    work = [(kern, var) for kern, vs in KERNEL_VARIANTS.items() if only is None or kern in only for var in vs]
    total = sum(len(spec.dims[k]) for k, _ in work)
    refs = [r for r in REFERENCES if only is None or r[0] in only]
    before = [_reference_time(make, runner, r, device) for r in refs], _load()
    tables = []
    for kern, var in work:
        points: list[Point] = []
        last: tuple[float, float] | None = None  # (flops, seconds) of the largest measured size
        floor = None  # the kernel's per-call floor: the time of its smallest size (launch, threading overhead)
        for dims in sorted(spec.dims[kern], key=lambda d: flops(kern, var, d)):
            x = flops(kern, var, dims)
            if progress:
                progress(f"{kern}/{var} {'×'.join(map(str, dims))}", total)
            # skip sizes predicted over the cap by "floor + work-proportional part": a small size whose time is
            # all overhead (e.g. thread wake-ups on a busy machine) must not make larger sizes look too slow
            if last is not None and floor + (last[1] - floor) * x / max(last[0], 1.0) > spec.cap_s:
                continue
            fn, check = make(kern, var, dims, device)
            secs, reps = median_seconds(runner(fn), warmup=1, budget_s=spec.budget_s)
            if not check():
                continue
            points.append(Point(dims=list(dims), seconds=secs, reps=reps))
            last = (x, secs)
            floor = secs if floor is None else min(floor, secs)
        if points:
            tables.append(KernelTable(kernel=kern, variant=var, points=points))
    after = [_reference_time(make, runner, r, device) for r in refs], _load()
    checks = []
    for i, (kern, var, dims) in enumerate(refs):
        t = next((t for t in tables if t.kernel == kern and t.variant == var), None)
        during = [p.seconds for p in (t.points if t else []) if tuple(p.dims) == dims]
        checks.append(noise(kern, var, dims, [before[0][i]] + during[:1] + [after[0][i]],
                            [x for x in (before[1], after[1]) if x is not None]))
    profile = HardwareProfile(name=name or profile_name(info), created_by=_created_by(), quick=quick, device=info,
                              roofline=fit_roofline(tables), tables=tables, noise=checks or None)
    return profile


#: reference problems timed before and after a profile run, and compared with the run's own point of that size
#: (both grids hold them): a product and an eigendecomposition, small enough to cost well under a second
REFERENCES: tuple[tuple[str, str, tuple[int, ...]], ...] = (("gemm", KERNEL_VARIANTS["gemm"][0], (512, 512, 512)),
                                                             ("inv_root", KERNEL_VARIANTS["inv_root"][0], (64,)))
#: times of one problem that disagree by more than this factor mark the profile noisy
NOISE_LIMIT = 1.5


def noise(kernel: str, variant: str, dims: tuple[int, ...], seconds: list[float], load: list[float],
          limit: float = NOISE_LIMIT) -> ProfileNoise:
    """The spread (slowest / fastest) of one problem's times taken at different moments of a profile run."""
    ratio = max(seconds) / min(seconds)
    return ProfileNoise(kernel=kernel, variant=variant, dims=list(dims), seconds=list(seconds), ratio=ratio,
                        limit=limit, load_average=load, noisy=ratio > limit)


def noise_warning(profile: HardwareProfile) -> str | None:
    """One sentence when the profile's reference problems disagree beyond the limit (None when they agree)."""
    bad = [n for n in profile.noise or [] if n.noisy]
    if not bad:
        return None
    parts = [f"{n.kernel} {'×'.join(map(str, n.dims))} took {' / '.join(f'{s * 1e3:.3g}' for s in n.seconds)} ms "
             f"(before / during / after: {n.ratio:.1f}× apart)" for n in bad]
    load = bad[0].load_average
    cpus = _cpus()
    return (f"the machine was busy while profiling: {'; '.join(parts)}, over the {bad[0].limit:g}× limit"
            + (f", load average {' → '.join(f'{x:.1f}' for x in load)} on {cpus} CPUs" if load else "")
            + "; the profile is marked noisy (its times are inflated): measure again on a quiet machine.")


def _reference_time(make, runner, ref, device) -> float:
    kern, var, dims = ref
    fn, _ = make(kern, var, dims, device)
    return median_seconds(runner(fn), warmup=1, budget_s=0.1)[0]


def _load() -> float | None:
    import os

    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def fit_roofline(tables: list[KernelTable]) -> Roofline:
    """Peak FLOP/s of the matrix products, bandwidth and per-call overhead of the elementwise pass."""
    peak = [flops("gemm", t.variant, tuple(p.dims)) / p.seconds for t in tables if t.kernel == "gemm"
            for p in t.points]
    bw = [bytes_moved("pointwise", tuple(p.dims)) / p.seconds for t in tables if t.kernel == "pointwise"
          for p in t.points]
    small = [p.seconds for t in tables if t.kernel == "pointwise" for p in t.points]
    return Roofline(peak_flops=max(peak, default=1e11), bandwidth=max(bw, default=1e10),
                    overhead_s=min(small, default=5e-6))


def _created_by() -> str:
    from .. import __version__

    return f"sketchplan {__version__}"


def describe(profile: HardwareProfile) -> str:
    """One line: device, points measured, roofline."""
    n = sum(len(t.points) for t in profile.tables)
    r = profile.roofline
    return (f"{profile.name}: {profile.device.name} ({profile.device.kind}, {profile.device.framework}), "
            f"{n} sizes over {len(profile.tables)} kernel variants; roofline {r.peak_flops / 1e9:.1f} GFLOP/s, "
            f"{r.bandwidth / 1e9:.1f} GB/s, {r.overhead_s * 1e6:.1f} µs per call")

