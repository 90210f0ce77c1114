"""A shipped profile scaled to this machine by a calibration (profiles.calibrate), without timing anything:
the measurements are a fake with known ratios."""

import json
import math

import pytest

from sketchplan.kernels.calls import flops
from sketchplan.profiles import calibrate as cal
from sketchplan.profiles.cost import CostModel
from sketchplan.profiles.registry import label, resolve, shipped_profiles

BASE = "cpu-amd-epyc-1t-torch"


def fake_measure(profile, ratio_of):
    cost = CostModel(profile)

    def run(kernel, variant, dims):
        return cost.problem(kernel, variant, dims, in_step=False).seconds * ratio_of(kernel, dims)  # the harness
    return run


def _info(cores):
    base = resolve(BASE)
    return base, base.device.model_copy(update={"cores": cores})


def test_scaled_profile_reproduces_the_measurements_at_the_reference_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHPLAN_CACHE", str(tmp_path))
    base, info = _info(2)
    ratio = lambda kernel, dims: {"gemm": 0.6, "inv_root": 0.8, "pointwise": 0.9}[kernel] * (  # noqa: E731
        1.0 if math.prod(dims) < 100_000 else 0.5)
    prof = cal.calibrate(base, info, fake_measure(base, ratio))
    assert prof.name == f"{BASE}-scaled-2t" and prof.device.cores == 2 and prof.measured
    new, old = CostModel(prof), CostModel(base)
    for small, large in cal.REFERENCE.values():
        for kernel, variant, dims in (small, large):
            assert new.problem(kernel, variant, dims, in_step=False).seconds == pytest.approx(
                old.problem(kernel, variant, dims, in_step=False).seconds * ratio(kernel, dims), rel=1e-6)
    # families follow their reference kernel: an FD update scales like eigh, a low-rank apply like gemm
    t = next(t for t in base.tables if t.kernel == "fd_update")
    p = t.points[-1]
    lx = math.log(flops("fd_update", t.variant, tuple(p.dims)))
    want = p.seconds * cal.factor(cal.ratios(base, fake_measure(base, ratio))["decomposition"], lx)
    assert next(q for q in next(s for s in prof.tables if s.kernel == "fd_update" and s.variant == t.variant).points
                if q.dims == p.dims).seconds == pytest.approx(want, rel=1e-9)
    assert "scaled by a calibration measured here" in label(prof)


def test_factor_interpolates_in_log_work_and_holds_outside():
    table = [[10.0, 2.0], [20.0, 1.0]]
    assert cal.factor(table, 5.0) == 2.0 and cal.factor(table, 25.0) == 1.0
    assert cal.factor(table, 15.0) == pytest.approx(1.5)


def test_ratios_are_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHPLAN_CACHE", str(tmp_path))
    monkeypatch.setattr(cal.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    base, info = _info(3)
    first = cal.calibrate(base, info, fake_measure(base, lambda k, d: 0.7))

    def boom(*a):
        raise AssertionError("measured again although cached")
    second = cal.calibrate(base, info, boom)
    assert [p.seconds for t in first.tables for p in t.points] == [p.seconds for t in second.tables for p in t.points]
    assert list((tmp_path / "calibration").glob("*.json"))


def test_a_busy_calibration_is_measured_again_once_the_machine_is_quiet(tmp_path, monkeypatch):
    """Ratios measured under load are reused while the machine stays busy, replaced on the first quiet plan."""
    monkeypatch.setenv("SKETCHPLAN_CACHE", str(tmp_path))
    base, info = _info(2)
    monkeypatch.setattr(cal.os, "getloadavg", lambda: (9.0, 9.0, 9.0))       # busy: 9 > 2 threads
    slow = cal.calibrate(base, info, fake_measure(base, lambda k, d: 40.0))

    def boom(*a):
        raise AssertionError("measured again although the machine is still busy")
    again = cal.calibrate(base, info, boom)
    assert [p.seconds for t in slow.tables for p in t.points] == [p.seconds for t in again.tables for p in t.points]
    monkeypatch.setattr(cal.os, "getloadavg", lambda: (0.5, 0.5, 0.5))       # quiet now
    calls = []

    def quiet(kernel, variant, dims):
        calls.append(kernel)
        return fake_measure(base, lambda k, d: 0.8)(kernel, variant, dims)
    fresh = cal.calibrate(base, info, quiet)
    assert calls  # measured again
    ratio = CostModel(fresh).problem("gemm", "matmul", (768, 768, 768)).seconds / \
        CostModel(base).problem("gemm", "matmul", (768, 768, 768)).seconds
    assert ratio == pytest.approx(0.8, rel=1e-6)
    cached = json.loads(next((tmp_path / "calibration").glob("*.json")).read_text())
    assert cached["busy"] is False and cached["load_average"] == 0.5


def test_auto_uses_the_scaled_profile_when_only_the_thread_count_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHPLAN_CACHE", str(tmp_path))
    base, info = _info(4)
    monkeypatch.setattr("sketchplan.profiles.registry.host_info", lambda: info)
    monkeypatch.setattr(cal, "torch_measure", lambda threads: fake_measure(base, lambda k, d: 0.5))
    prof = resolve("auto")
    assert prof.name == f"{BASE}-scaled-4t" and prof.measured
    assert CostModel(prof).problem("gemm", "matmul", (768, 768, 768)).seconds == pytest.approx(
        0.5 * CostModel(base).problem("gemm", "matmul", (768, 768, 768)).seconds, rel=1e-6)
    other = info.model_copy(update={"name": "Some Other CPU"})
    monkeypatch.setattr("sketchplan.profiles.registry.host_info", lambda: other)
    assert not resolve("auto").measured  # another CPU: the analytic fallback, flagged
    assert len(shipped_profiles()) >= 1
