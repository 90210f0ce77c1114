"""A shipped profile made to fit this machine: measured tables scaled by a calibration measured here.

When ``--hardware auto`` finds a shipped profile of this CPU (same name, framework) measured at another thread
count, it does not fall back to the analytic roofline: it times a few reference kernels here, at this host's
thread count, and scales the profile's tables by the measured ratio (``calibrate``). Per kernel family (matrix
products: ``gemm`` and ``lowrank_apply``; decompositions: ``inv_root`` and ``fd_update``; ``pointwise``) two
problem sizes are timed, small and large, because more threads speed up large problems and not small ones: the
ratio is interpolated linearly in log-work between them (and held constant outside). Times come from the same
problem builders as ``sketchplan profile`` (``profiles.measure``): the fastest of repeated runs, because a
shared machine's load only ever adds time and the cache should describe the machine, not the moment.

The ratios are cached (``$SKETCHPLAN_CACHE`` or ``~/.cache/sketchplan``, ``calibration/*.json``, keyed by the
profile, the CPU, the thread count and the framework version), so a machine measures once (about a second) and
planning stays framework-free afterwards. Ratios measured while the machine is busier than its cores (1-minute
load average above the thread count) are cached too, with that load recorded, so that a busy machine does not
re-measure (and import torch) on every plan; the first plan on a quiet machine measures them again (a busy
calibration once predicted Sketchy steps 60× too slow and pushed the default GPT-2 plan to all-Adam), and
``SKETCHPLAN_RECALIBRATE=1`` measures again in any case.
The plan names the scaled profile (``<profile>-scaled-<N>t``) and its ratios. ``SKETCHPLAN_NO_CALIBRATION=1``
skips the measurement (the analytic fallback is used instead).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

from ..kernels.calls import flops
from .schema import DeviceInfo, HardwareProfile, KernelTable, Point, Roofline

#: family → ((kernel, variant, dims) small, (kernel, variant, dims) large)
REFERENCE: dict[str, tuple[tuple[str, str, tuple[int, ...]], tuple[str, str, tuple[int, ...]]]] = {
    "gemm": (("gemm", "matmul", (128, 128, 128)), ("gemm", "matmul", (768, 768, 768))),
    "decomposition": (("inv_root", "eigh", (64,)), ("inv_root", "eigh", (384,))),
    "pointwise": (("pointwise", "lerp", (1 << 16,)), ("pointwise", "lerp", (1 << 22,))),
}
FAMILY = {"gemm": "gemm", "lowrank_apply": "gemm", "inv_root": "decomposition", "fd_update": "decomposition",
          "pointwise": "pointwise"}
VERSION = 1

Measure = Callable[[str, str, tuple[int, ...]], float]
#: Ratios measured by this process (also the uncached ones of a busy machine: measured once per process).
_MEASURED: dict[str, dict] = {}


def _cache_file(profile: HardwareProfile, info: DeviceInfo) -> Path:
    root = Path(os.environ.get("SKETCHPLAN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                           Path.home() / ".cache") / "sketchplan")
    import re

    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{profile.name}-{info.name}-{info.cores}t-{info.framework}-"
                                          f"{info.framework_version}")
    return root / "calibration" / f"{slug}.json"


def torch_measure(threads: int | None) -> Measure:
    """Fastest of repeated runs of one reference problem with torch at ``threads`` threads (restored after)."""
    def run(kernel: str, variant: str, dims: tuple[int, ...]) -> float:
        import time

        import torch

        from ..kernels.timing import torch_runner
        from .measure import _torch_problem

        old = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            fn, _ = _torch_problem(kernel, variant, dims, "cpu")
            timed = torch_runner(fn, "cpu")
            timed()
            best, start, n = math.inf, time.perf_counter(), 0
            while n < 5 or (n < 40 and time.perf_counter() - start < 0.2):
                best = min(best, timed())
                n += 1
        finally:
            torch.set_num_threads(old)
        return best
    return run


def ratios(profile: HardwareProfile, measure: Measure) -> dict[str, list[list[float]]]:
    """Per family: [[log work, measured / profiled], ...] at the small and large reference sizes."""
    from .cost import CostModel

    cost = CostModel(profile)
    out: dict[str, list[list[float]]] = {}
    for fam, refs in REFERENCE.items():
        pts = []
        for kernel, variant, dims in refs:
            predicted = cost.problem(kernel, variant, dims, in_step=False).seconds  # as the harness times it
            pts.append([math.log(flops(kernel, variant, dims)), measure(kernel, variant, dims) / predicted])
        out[fam] = pts
    return out


def factor(table: list[list[float]], log_work: float) -> float:
    """The ratio at ``log_work``: linear in log-work between the reference sizes, constant outside."""
    (x0, r0), (x1, r1) = sorted(table)
    if log_work <= x0 or x1 <= x0:
        return r0
    if log_work >= x1:
        return r1
    return r0 + (r1 - r0) * (log_work - x0) / (x1 - x0)


def scaled(profile: HardwareProfile, info: DeviceInfo, table: dict[str, list[list[float]]]) -> HardwareProfile:
    """``profile`` with every measured time multiplied by its family's ratio (module docstring)."""
    tables = []
    for t in profile.tables:
        fam = table.get(FAMILY.get(t.kernel, "gemm"))
        pts = [Point(dims=p.dims, seconds=p.seconds * factor(fam, math.log(max(flops(t.kernel, t.variant,
                                                                                     tuple(p.dims)), 1e-30))),
                     reps=p.reps) for p in t.points]
        tables.append(KernelTable(kernel=t.kernel, variant=t.variant, dtype=t.dtype, points=pts))
    big = {f: sorted(v)[-1][1] for f, v in table.items()}  # the ratio at the large size
    r = profile.roofline
    roof = Roofline(peak_flops=r.peak_flops / big["gemm"], bandwidth=r.bandwidth / big["pointwise"],
                    overhead_s=r.overhead_s)
    note = ", ".join(f"{f} ×{sorted(v)[0][1]:.2f}…×{sorted(v)[-1][1]:.2f}" for f, v in table.items())
    return HardwareProfile(name=f"{profile.name}-scaled-{info.cores}t",
                           created_by=f"{profile.name} scaled by a calibration measured here at {info.cores} "
                                      f"thread(s) ({note})",
                           measured=True, quick=profile.quick, device=info, roofline=roof, tables=tables)


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _busy(info: DeviceInfo) -> bool:
    """The 1-minute load average is above the thread count: timings now are inflated by other jobs."""
    load = _load()
    return load is not None and load > (info.cores or os.cpu_count() or 1)


def calibrate(profile: HardwareProfile, info: DeviceInfo, measure: Measure | None = None) -> HardwareProfile | None:
    """The scaled profile for this host (cached ratios, else measured now); None when it cannot be measured."""
    path = _cache_file(profile, info)
    table = _MEASURED.get(str(path)) if measure is None else None
    if table is None and path.is_file() and not os.environ.get("SKETCHPLAN_RECALIBRATE"):
        try:
            data = json.loads(path.read_text())
            if data.get("version") == VERSION and set(data.get("ratios", {})) == set(REFERENCE) \
                    and not (data.get("busy") and not _busy(info)):  # measured busy, quiet now: measure again
                table = data["ratios"]
        except (OSError, ValueError):
            table = None
    if table is None:
        if measure is None:
            if os.environ.get("SKETCHPLAN_NO_CALIBRATION") or info.framework != "torch":
                return None
            try:
                import torch  # noqa: F401
            except ImportError:
                return None
            measure = torch_measure(info.cores)
        table = ratios(profile, measure)
        _MEASURED[str(path)] = table
        load = _load()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"version": VERSION, "profile": profile.name, "ratios": table,
                                       "load_average": load, "busy": _busy(info)}))
            tmp.replace(path)
        except OSError:
            pass
    return scaled(profile, info, table)
