"""Hardware profiles: the cost model's interpolation and extrapolation, variant picking, profile files,
``--hardware`` resolution, predicted step times in plans, and the variants reaching the optimizer."""

from __future__ import annotations

import math

import pytest
import torch

from sketchplan.errors import UserError
from sketchplan.kernels.calls import KernelCall, flops
from sketchplan.build import build_optimizer
from sketchplan.methods.layout import MethodConfig, OptimizerDefaults
from sketchplan.planner import make_plan
from sketchplan.planner.make import uniform_plan
from sketchplan.profiles import CostModel, DeviceInfo, HardwareProfile, KernelTable, Point, Roofline, resolve
from sketchplan.profiles.measure import fit_roofline, measure_profile

DEVICE = DeviceInfo(kind="cpu", name="Test CPU", cores=1, framework="torch")


def _table(kernel, variant, pts):
    return KernelTable(kernel=kernel, variant=variant, points=[Point(dims=list(d), seconds=s) for d, s in pts])


def _profile(**extra) -> HardwareProfile:
    tables = [
        _table("gemm", "matmul", [((64, 64, 64), 1e-4), ((256, 256, 256), 2e-3), ((128, 128, 128), 5e-3)]),
        # svd is faster on thin problems, gram_large (never picked: it squares the conditioning) on wide ones
        _table("fd_update", "svd", [((256, 16, 64), 1e-3), ((256, 16, 1024), 1e-1)]),
        _table("fd_update", "gram_large", [((256, 16, 64), 4e-3), ((256, 16, 1024), 1e-2)]),
        _table("inv_root", "eigh", [((64,), 1e-3), ((256,), 3e-2)]),
        _table("pointwise", "lerp", [((1,), 2e-6), ((1 << 20,), 1e-3)]),
        _table("lowrank_apply", "lowrank", [((256, 16, 256), 1e-4)]),
    ]
    return HardwareProfile(name="test-cpu", device=DEVICE, roofline=fit_roofline(tables), tables=tables, **extra)


def test_interpolation_is_exact_at_points_and_monotone():
    cost = CostModel(_profile())
    # the non-monotone middle point (128³ slower than 256³) is pooled with its neighbour
    assert cost.problem("inv_root", "eigh", (64,)).seconds == pytest.approx(1e-3)
    assert cost.problem("inv_root", "eigh", (256,)).seconds == pytest.approx(3e-2)
    prev = 0.0
    for d in (16, 64, 96, 128, 192, 256, 512, 2048):
        t = cost.problem("gemm", "matmul", (d, d, d)).seconds
        assert t >= prev
        prev = t
    mid = cost.problem("inv_root", "eigh", (128,))
    assert 1e-3 < mid.seconds < 3e-2 and not mid.extrapolated
    lx = [math.log(flops("inv_root", "eigh", (d,))) for d in (64, 128, 256)]
    f = (lx[1] - lx[0]) / (lx[2] - lx[0])  # log-log linear
    assert math.log(mid.seconds) == pytest.approx(math.log(1e-3) + f * (math.log(3e-2) - math.log(1e-3)))


def test_elementwise_passes_in_a_step_are_priced_out_of_cache():
    """The profile times a pass over the same arrays again and again (from cache once they fit); a step streams
    its state from memory: a pass over n elements costs at least n × the largest measured size's per-element
    time (here 1 ms / 2²⁰), where the harness-like estimate interpolates between the two points."""
    prof = _profile()
    prof = prof.model_copy(update={"tables": [t for t in prof.tables if t.kernel != "pointwise"] + [
        _table("pointwise", "lerp", [((1,), 2e-6), ((1 << 10,), 2.2e-6), ((1 << 14,), 4e-6), ((1 << 20,), 1e-3)])]})
    cost = CostModel(prof)
    n = 1 << 14
    assert cost.problem("pointwise", "lerp", (n,), in_step=False).seconds == pytest.approx(4e-6)  # the point
    assert cost.problem("pointwise", "lerp", (n,)).seconds == pytest.approx(1e-3 * n / (1 << 20))  # 15.6 µs
    assert cost.problem("pointwise", "lerp", (1,)).seconds == pytest.approx(2e-6)  # dispatch stays the floor
    assert cost.problem("pointwise", "lerp", (1 << 20,)).seconds == pytest.approx(1e-3)


def test_shape_residuals_correct_the_curve_between_shapes_of_equal_work():
    """Two low-rank applies of the same flops (4·d·k·m) measured 1 ms and 4 ms: the monotone curve pools them
    (2 ms each), the shape correction gives each its own time back, and a shape next to the fast one (m one
    element larger) is predicted near 1 ms, not near the pooled 2 ms. Products keep the plain curve."""
    fast, slow = (1024, 64, 1024), (256, 256, 1024)   # 4·1024·64·1024 = 4·256·256·1024
    prof = _profile()
    prof = prof.model_copy(update={"tables": [t for t in prof.tables if t.kernel != "lowrank_apply"] + [
        _table("lowrank_apply", "lowrank", [((64, 16, 64), 1e-5), (fast, 1e-3), (slow, 4e-3),
                                            ((2048, 256, 2048), 0.1)])]})
    cost = CostModel(prof)
    assert cost.problem("lowrank_apply", "lowrank", fast).seconds == pytest.approx(1e-3)
    assert cost.problem("lowrank_apply", "lowrank", slow).seconds == pytest.approx(4e-3)
    near = cost.problem("lowrank_apply", "lowrank", (1024, 64, 1025)).seconds
    assert 0.9e-3 < near < 1.2e-3
    # a 128³ product was measured slower than 256³: pooled, and not undone by a shape correction
    assert cost.problem("gemm", "matmul", (128, 128, 128)).seconds < 5e-3


def test_outside_the_grid_is_flagged_and_scaled_by_the_roofline():
    cost = CostModel(_profile())
    big = cost.problem("inv_root", "eigh", (1024,))
    assert big.extrapolated and big.seconds > 3e-2
    ratio = cost.roofline("inv_root", "eigh", (1024,)) / cost.roofline("inv_root", "eigh", (256,))
    assert big.seconds == pytest.approx(3e-2 * ratio)
    small = cost.problem("inv_root", "eigh", (8,))
    assert small.extrapolated and small.seconds == pytest.approx(1e-3)
    newton = cost.problem("inv_root", "newton", (64,))  # no table: analytic roofline
    assert newton.analytic and newton.seconds > 0


def test_step_picks_the_fastest_measured_variant_and_amortises():
    cost = CostModel(_profile())
    thin = [KernelCall("fd_update", (256, 16, 64))]
    wide = [KernelCall("fd_update", (256, 16, 1024))]
    assert cost.step(thin)[1] == {"fd_update": "svd"}
    assert cost.step(wide)[1] == {"fd_update": "svd"}  # gram_large is faster but never picked (accuracy)
    t1, _ = cost.step([KernelCall("inv_root", (256,), batch=2, every=10)])
    assert t1 == pytest.approx(2 * 3e-2 / 10)
    fixed, picks = cost.step([KernelCall("fd_update", (256, 16, 1024), variant="svd")])
    assert picks == {} and fixed == pytest.approx(1e-1)


def test_profile_yaml_round_trip_and_bad_fields(tmp_path):
    prof = _profile()
    path = prof.save(tmp_path / "p.yaml")
    assert HardwareProfile.load(path) == prof
    path.write_text(path.read_text().replace("peak_flops", "peak_flop"))
    with pytest.raises(UserError, match="roofline"):
        HardwareProfile.load(path)
    with pytest.raises(UserError, match="does not exist"):
        HardwareProfile.load(tmp_path / "missing.yaml")


def test_resolve_file_name_auto_and_unknown(tmp_path):
    path = _profile().save(tmp_path / "p.yaml")
    assert resolve(str(path)).name == "test-cpu"
    assert resolve(None) is None
    auto = resolve("auto")
    assert auto.device.kind in ("cpu", "cuda")
    with pytest.raises(UserError, match="neither auto"):
        resolve("no-such-profile")


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 16))


def test_plans_carry_step_ms_and_variants_and_the_optimizer_uses_them():
    model = _mlp()
    prof = _profile()
    plan = uniform_plan(model, MethodConfig(method="sketchy", rank=16), hardware=prof)
    assert plan.hardware == "test-cpu"
    timed = [e for e in plan.tensors if e.method is not None]
    assert all(e.step_ms is not None and e.step_ms > 0 for e in timed)
    assert plan.totals.step_ms == pytest.approx(sum(e.step_ms for e in timed), abs=1e-3)
    assert all(e.variant and e.variant["fd_update"] in ("svd", "qr_svd") for e in timed)
    # force a variant and check it reaches the param group
    plan.tensors[0].variant = {"fd_update": "qr_svd"}
    opt = build_optimizer(plan, model)
    by_param = {id(p): g["fd_variant"] for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model[0].weight)] == "qr_svd"
    assert len({g["fd_variant"] for g in opt.param_groups}) >= 2
    plain = uniform_plan(model, MethodConfig(method="sketchy", rank=16))
    assert plain.totals.step_ms is None and plain.hardware is None


def test_make_plan_with_profile_times_what_ifs():
    plan = make_plan(_mlp(), None, hardware=_profile())
    assert plan.totals.step_ms is not None and all(w.step_ms is not None for w in plan.what_if)
    timed = [e for e in plan.tensors if e.method is not None]
    assert timed and all(e.step_ms is not None and e.step_ms > 0 for e in timed)
    shampoo = uniform_plan(_mlp(), MethodConfig(method="shampoo"), hardware=_profile())
    roots = [e for e in shampoo.tensors if e.method == "shampoo"]
    assert roots and all(e.variant == {"inv_root": "eigh"} for e in roots)


def test_measure_profile_small_run():
    prof = measure_profile("cpu", "torch", quick=True, only=("pointwise",))
    assert prof.device.kind == "cpu" and [t.kernel for t in prof.tables] == ["pointwise"]
    assert all(p.seconds > 0 for p in prof.tables[0].points)
    assert prof.roofline.bandwidth > 0
    # the eigh/SVD/QR library is recorded: the LAPACK torch reports it was built with, MKL's version when MKL
    import torch

    assert prof.device.linalg.startswith("LAPACK")
    if torch.backends.mkl.is_available():
        assert "mkl" in prof.device.linalg and "Math Kernel Library Version" in prof.device.linalg


def test_profile_cli_rejects_bad_device(capsys):
    from sketchplan.cli import main

    assert main(["profile", "--device", "gpu0", "--quick"]) == 2
    assert "not one of cpu" in capsys.readouterr().err


def test_measure_profile_jax_small_run():
    pytest.importorskip("jax")
    prof = measure_profile("cpu", "jax", quick=True, only=("pointwise", "lowrank_apply"))
    assert prof.device.framework == "jax"
    import jaxlib

    assert prof.device.linalg == f"XLA (jaxlib {jaxlib.__version__})"
    assert {t.kernel for t in prof.tables} == {"pointwise", "lowrank_apply"}
