"""Per-device plans for a JAX mesh (``make_plan(..., mesh=...)``, ``plan --mesh``, ``check --measure`` on a mesh).

Planner-level tests give the mesh by its axis sizes and need no devices (no subprocess). The expected bytes are
derived by hand from the methods' layouts as docs/algorithms.md describes them and methods.mesh_placement's
rule (elementwise state split like its parameter; stacked blocks split along the block axis over all devices
when the block count is a multiple of the device count; the rest replicated; a 4-byte step count per device).
One test runs ``sketchplan check --measure`` on a 4-device CPU mesh in subprocesses (XLA_FLAGS must be set
before JAX starts) and compares each device's ``addressable_shards`` bytes with the plan and with the hand
figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sketchplan.cli import main
from sketchplan.errors import UserError
from sketchplan.methods.layout import MethodConfig
from sketchplan.planner import make_plan, plan_from_configs
from sketchplan.planner.analysis import ModelSpec, ParamSpec
from sketchplan.planner.plan import Plan

HERE = Path(__file__).parent
MESH = {"data": 2, "model": 2}
ADAM = MethodConfig(method="adam")
BLOCKED = MethodConfig(method="blocked_shampoo", block_size=8)  # graft adam, momentum float32
SKETCHY = MethodConfig(method="sketchy", rank=2, block_size=8, graft="adafactor", momentum="none")


def _model(**specs) -> ModelSpec:
    shapes = {"w": (16, 32), "b": (32,), "r": (4, 4), "odd": (5, 8)}
    return ModelSpec([ParamSpec(n, s, spec=specs.get(n)) for n, s in shapes.items()])


def test_adam_per_device_bytes_by_hand():
    """Adam keeps exp_avg and exp_avg_sq (float32, the parameter's shape) and a 4-byte nonfinite_skips counter.
    w (16, 32) split (data, model) over 4 devices: 2 × 2048 B / 4 + 4 = 1028 B per device; b (32,) split over
    model (2): 2 × 128 B / 2 + 4 = 132; r (4, 4) and odd (5, 8) replicated: 2 × 64 + 4 = 132 and
    2 × 160 + 4 = 324. Plus the step count: 4. Parameters and gradients are split the same way:
    2048/4 + 128/2 + 64 + 160 = 800 B each."""
    plan = plan_from_configs(_model(), ADAM, mesh=MESH,
                             partition_specs={"w": ("data", "model"), "b": ["model"]})
    by_name = {e.name: e for e in plan.tensors}
    assert {n: e.device_state_bytes for n, e in by_name.items()} == {"w": 1028, "b": 132, "r": 132, "odd": 324}
    assert by_name["w"].state_bytes == 2 * 2048 + 4  # the whole tensor's, as without a mesh
    assert by_name["w"].spec == ["data", "model"] and by_name["r"].spec == []
    t = plan.totals
    assert t.state_bytes_by_device == [1028 + 132 + 132 + 324 + 4] * 4 == [1620] * 4
    assert t.state_bytes_per_device == 1620
    assert t.params_bytes_per_device == t.grads_bytes_per_device == 800
    assert t.params_bytes == 4 * (512 + 32 + 16 + 40)  # whole model, one copy
    assert t.peak_bytes == 800 + 800 + 1620 + t.workspace_bytes
    assert plan.settings.mesh == MESH and list(plan.settings.mesh) == ["data", "model"]


def test_factored_methods_per_device_bytes_by_hand():
    """Blocked Shampoo, B = 8, on w (16, 32): 16·32 = 512 ≤ merge_dims, so one axis of 512 cut into 64 blocks
    of 8, each with an 8×8 float32 statistic and root, stacked (64, 8, 8) = 16384 B each; 64 is a multiple of
    the 4 devices, so each holds 16 blocks: 4096 B each. Its graft second moment and momentum (float32,
    parameter-shaped, 2048 B) are split like w: (None, model) → 1024 B each. Total 4096·2 + 1024·2 + 4 = 10244.
    odd (5, 8): 40 elements, 5 blocks — not a multiple of 4, replicated: (5, 8, 8) = 1280 B twice, its
    elementwise state replicated too (160 B twice): 2880 + 4 = 2884.
    Sketchy (k = 2, B = 8, Adafactor graft, no momentum) on w: 64 blocks, U (64, 8, 2) = 4096 B, σ² (64, 2) =
    512 B, ρ (64,) = 256 B, the factored graft v (512,) = 2048 B, all split 4 ways: 1024 + 128 + 64 + 512, + 4 =
    1732."""
    spec = ModelSpec([ParamSpec("w", (16, 32), spec=(None, "model")), ParamSpec("odd", (5, 8))])
    plan = plan_from_configs(spec, BLOCKED, mesh=MESH)
    assert {e.name: e.device_state_bytes for e in plan.tensors} == {"w": 10244, "odd": 2884}
    assert plan.totals.state_bytes_by_device == [10244 + 2884 + 4] * 4
    sk = plan_from_configs(ModelSpec([ParamSpec("w", (16, 32), spec=("data", "model"))]), SKETCHY, mesh=MESH)
    assert sk.tensors[0].device_state_bytes == 1732
    assert sk.tensors[0].state_bytes == 4096 + 512 + 256 + 2048 + 4


def test_budget_is_per_device_and_candidates_weigh_device_bytes():
    """With 4 devices the same per-device budget holds more preconditioning than one device does: the mesh plan
    scores higher, its predicted per-device peak fits, and its whole state is more than one device's budget."""
    spec = lambda: ModelSpec([ParamSpec(f"l{i}", (256, 256), spec=("data", None)) for i in range(4)])  # noqa: E731
    kw = dict(block_sizes=(64, 128), ranks=(16,), hardware=None)
    budget = 4 * 2**20
    one = make_plan(spec(), budget, **kw)
    four = make_plan(spec(), budget, mesh={"data": 4}, **kw)
    assert four.totals.score > one.totals.score
    assert four.totals.peak_bytes <= four.budget.available()
    assert four.totals.state_bytes > four.totals.state_bytes_per_device
    assert four.totals.state_bytes_per_device == max(four.totals.state_bytes_by_device)
    assert sum(e.device_state_bytes for e in four.tensors) + 4 == four.totals.state_bytes_per_device
    # the peak is one device's: its params and grads are a quarter of the whole
    assert four.totals.params_bytes_per_device * 4 == four.totals.params_bytes


def test_jax_mesh_spec_tree_and_sharded_leaves_give_the_same_plan():
    """A mesh as a jax AbstractMesh, specs as a PartitionSpec tree, or leaves carrying NamedShardings: one plan."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.sharding.AbstractMesh((2, 2), ("data", "model"))
    shapes = {"w": jax.ShapeDtypeStruct((16, 32), jnp.float32), "b": jax.ShapeDtypeStruct((32,), jnp.float32)}
    by_dict = plan_from_configs(shapes, ADAM, mesh=MESH, partition_specs={"w": ("data", "model"), "b": ("model",)})
    by_tree = plan_from_configs(shapes, ADAM, mesh=mesh, partition_specs={"w": P("data", "model"), "b": P("model")})
    sharded = {"w": jax.ShapeDtypeStruct((16, 32), jnp.float32, sharding=NamedSharding(mesh, P("data", "model"))),
               "b": jax.ShapeDtypeStruct((32,), jnp.float32, sharding=NamedSharding(mesh, P("model")))}
    by_leaves = plan_from_configs(sharded, ADAM, mesh=mesh)
    assert by_dict.to_yaml() == by_tree.to_yaml() == by_leaves.to_yaml()
    assert by_dict.totals.state_bytes_by_device == [1028 + 132 + 4] * 4
    with pytest.raises(UserError, match="sharded over mesh data=2,model=2 but the plan is for mesh data=4"):
        plan_from_configs(sharded, ADAM, mesh={"data": 4})


@pytest.mark.parametrize("kwargs,needle", [
    (dict(mesh=MESH, partition_specs={"w": ("pipe",)}), "names mesh axis 'pipe', which the mesh data=2,model=2 lacks"),
    (dict(mesh={"data": 3}, partition_specs={"w": ("data",)}), "dimension 0 of size 16 is split over data (3 devices)"),
    (dict(mesh=MESH, partition_specs={"w": ("data", "data")}), "uses mesh axis 'data' twice"),
    (dict(mesh=MESH, partition_specs={"b": (None, "model")}), "2 entries for a tensor of 1 dimensions"),
    (dict(mesh=MESH, partition_specs={"nope": ("data",)}), "'nope', which is not a parameter"),
    (dict(partition_specs={"w": ("data",)}), "give the mesh too"),
    (dict(mesh={"data": 0}), "sizes integers from 1"),
    (dict(mesh=MESH, world_size=2), "give one of them"),
])
def test_bad_mesh_input_is_one_sentence(kwargs, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")) as info:
        make_plan(_model(), "1GiB", hardware=None, **kwargs)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


SHAPES = """params:
  - {name: enc/kernel, shape: [16, 32], spec: [null, model]}
  - {name: enc/bias, shape: [32], spec: [model]}
  - {name: odd, shape: [5, 8]}
"""


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_plan_mesh_show_and_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "150")
    shapes = tmp_path / "shapes.yaml"
    shapes.write_text(SHAPES)
    out = tmp_path / "plan.yaml"
    code, text, err = _run(capsys, "plan", "--model", str(shapes), "--mesh", "data=2,model=2", "--methods", "adam",
                           "--memory-budget", "1MiB", "--out", str(out))
    assert code == 0, err
    assert "per device (mesh data=2,model=2, 4 devices)" in text and "build_optax" in text
    plan = Plan.load(str(out))
    # enc/kernel: 2 × 2048 / 2 + 4; enc/bias: 2 × 128 / 2 + 4; odd replicated: 2 × 160 + 4; + the count
    assert plan.totals.state_bytes_by_device == [2052 + 132 + 324 + 4] * 4
    code, text, _ = _run(capsys, "show", str(out), "--json")
    assert code == 0 and json.loads(text)["totals"]["state_bytes_per_device"] == 2512
    code, text, _ = _run(capsys, "show", str(out))
    assert "optimizer state (largest device)" in text and "peak per device" in text
    import re

    assert re.search(r"state\s+per device", text)  # the per-tensor column: enc/kernel's 2,052 B per device
    assert "2.00 KiB" in next(line for line in text.splitlines() if line.startswith("enc/kernel"))
    for mesh, needle in (("data=2,pipe=2", "lacks"), ("data=2,model=3", "does not divide"),
                         ("data=2,,", "axis=size")):
        bad = tmp_path / "bad.yaml"
        code, _, err = _run(capsys, "plan", "--model", str(shapes), "--mesh", mesh, "--memory-budget", "1MiB",
                            "--out", str(bad))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not bad.exists()
    # --update keeps the mesh and specs: the same plan, nothing written
    code, text, _ = _run(capsys, "plan", "--update", str(out))
    assert code == 0 and "nothing written" in text


def test_build_refuses_another_mesh_or_other_specs():
    """A plan for data=2,model=2 built where the state would land elsewhere: one sentence (1 CPU device here)."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from sketchplan import build_optax

    params = {"w": jnp.ones((16, 32)), "b": jnp.zeros((32,))}
    plan = plan_from_configs(params, ADAM, mesh=MESH, partition_specs={"w": ("data", "model")})
    tx = build_optax(plan, jax.eval_shape(lambda: params))
    with pytest.raises(UserError, match="made for mesh data=2,model=2 but the state would be placed on no mesh"):
        tx.init(params)
    one = jax.make_mesh((1,), ("data",))
    with pytest.raises(UserError, match="on mesh data=1"):
        tx.init({k: jax.device_put(v, NamedSharding(one, P())) for k, v in params.items()})
    # a one-device plan placed on a one-device mesh is fine, and a spec differing from the plan's is refused
    plan1 = plan_from_configs(params, ADAM, mesh={"data": 1}, partition_specs={"w": ("data",)})
    tx1 = build_optax(plan1, jax.eval_shape(lambda: params))
    state = tx1.init({k: jax.device_put(v, NamedSharding(one, P("data") if k == "w" else P()))
                      for k, v in params.items()})
    assert sum(x.nbytes for x in jax.tree.leaves(state)) == plan1.totals.state_bytes_per_device
    with pytest.raises(UserError, match="'w' is split as P\\(\\)"):
        tx1.init({k: jax.device_put(v, NamedSharding(one, P())) for k, v in params.items()})


def test_check_compares_every_device():
    """``check``'s measured-device-bytes result: a device holding 4 bytes fewer than predicted fails (exit 1) and
    is named; equal lists pass."""
    from sketchplan.planner.check import Measurement, MeasuredTensor, check

    model = _model()
    plan = plan_from_configs(model, ADAM, mesh=MESH, partition_specs={"w": ("data", "model")})
    predicted = list(plan.totals.state_bytes_by_device)

    def measurer(measured):
        return lambda plan, model, spec, configs: Measurement(
            device="mesh", mode="materialised", note="", predicted_state_bytes=0, measured_state_bytes=0,
            tensors=[MeasuredTensor(name="w", predicted_bytes=1028, measured_bytes=1028, method="adam")],
            predicted_device_bytes=predicted, measured_device_bytes=measured)

    ok = check(plan, model, measurer=measurer(predicted))
    assert ok.exit_code == 0 and [c.name for c in ok.checks][-1] == "measured-device-bytes"
    off = check(plan, model, measurer=measurer(predicted[:3] + [predicted[3] - 4]))
    bad = {c.name: c for c in off.checks}["measured-device-bytes"]
    assert off.exit_code == 1 and not bad.ok
    assert f"device 3 {predicted[3]:,} → {predicted[3] - 4:,}" in bad.message


def test_check_measure_on_a_4_device_mesh(tmp_path):
    """End to end on 4 CPU devices: a plan mixing Adam, blocked Shampoo and Sketchy is measured with
    ``sketchplan check --measure`` (state built by build_optax on the mesh and stepped once); each device's bytes
    equal the plan's and the hand figures. On 2 devices the measurement is refused (exit 2, nothing written).
    About 15 s of CPU (JAX start and compiling the three methods' step); longer on a loaded machine."""
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    shapes = tmp_path / "shapes.yaml"
    shapes.write_text("params:\n  - {name: w, shape: [16, 32], spec: [null, model]}\n"
                      "  - {name: s, shape: [16, 32], spec: [data, model]}\n  - {name: b, shape: [32], spec: [model]}\n"
                      "  - {name: odd, shape: [5, 8]}\n")
    from sketchplan.planner.sources import load_spec

    configs = {"w": BLOCKED, "s": SKETCHY, "b": ADAM, "odd": BLOCKED}
    plan = plan_from_configs(load_spec(str(shapes)), configs, source=str(shapes), mesh=MESH)
    # by hand (the docstrings above): w 10244, s 1732, b 2·128/2 + 4 = 132, odd 2884, count 4
    assert plan.totals.state_bytes_by_device == [10244 + 1732 + 132 + 2884 + 4] * 4
    good = tmp_path / "plan.yaml"
    good.write_text(plan.to_yaml())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE.parent),
                                                        os.environ.get("PYTHONPATH", "")])}

    def start(devices, report):
        e = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        return subprocess.Popen([sys.executable, "-m", "sketchplan", "check", str(good), "--measure",
                                 "--json", str(report)], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path)

    runs = {"four": start(4, tmp_path / "four.json"), "two": start(2, tmp_path / "two.json")}
    res = {k: (p.wait(timeout=600), *p.communicate()) for k, p in runs.items()}
    code, out, err = res["four"]
    assert code == 0, out[-2000:] + err[-2000:]
    m = json.loads((tmp_path / "four.json").read_text())["measured"]
    assert m["measured_device_bytes"] == m["predicted_device_bytes"] == [14996] * 4
    assert {t["name"]: t["measured_bytes"] for t in m["tensors"]} == {"w": 10244, "s": 1732, "b": 132, "odd": 2884}
    code, _, err = res["two"]
    assert code == 2 and "XLA_FLAGS=--xla_force_host_platform_device_count=4" in err.replace("\n", "")
    assert not (tmp_path / "two.json").exists()


def test_torch_build_refuses_a_mesh_plan():
    from sketchplan import build_optimizer

    plan = plan_from_configs(_model(), ADAM, mesh=MESH)
    with pytest.raises(UserError, match="made for the JAX mesh data=2,model=2; build it with build_optax"):
        build_optimizer(plan, None)


def test_hand_edited_mesh_plan_is_refused_on_load(tmp_path, capsys):
    plan = plan_from_configs(_model(), ADAM, mesh=MESH, partition_specs={"w": ("data", "model")})
    path = tmp_path / "plan.yaml"
    path.write_text(plan.to_yaml().replace("- data\n  - model\n", "- data\n  - pipe\n", 1))
    code, _, err = _run(capsys, "show", str(path))
    assert code == 2 and "'pipe'" in err and len(err.strip().splitlines()) == 1, err


def test_static_check_compares_the_largest_devices_state():
    """``check`` without measuring re-derives the largest device's state from today's rule and the plan's specs:
    the same plan passes; a plan that promised 4 bytes less per device fails (the whole state is unchanged)."""
    from sketchplan.planner.check import check

    model = _model()
    plan = plan_from_configs(model, BLOCKED, mesh=MESH, partition_specs={"w": (None, "model")})
    ok = {c.name: c for c in check(plan, _model()).checks}["device-state-bytes"]
    assert ok.ok and f"{plan.totals.state_bytes_per_device:,} → {plan.totals.state_bytes_per_device:,}" in ok.message
    low = plan.model_copy(deep=True)
    low.totals.state_bytes_per_device -= 4
    report = check(low, _model())
    assert report.exit_code == 1 and not {c.name: c for c in report.checks}["device-state-bytes"].ok


def test_closed_form_equals_the_per_device_enumeration():
    """``mesh_placement.even_tensor_bytes`` (what the planner uses) against ``tensor_device_bytes`` (which
    enumerates the devices): equal on every device for random divisible shapes, specs, meshes and methods."""
    import random

    from sketchplan.methods import state_layout
    from sketchplan.methods.layout import OptimizerDefaults
    from sketchplan.methods.mesh_placement import even_tensor_bytes, tensor_device_bytes

    rng = random.Random(1234)
    configs = [ADAM, BLOCKED, SKETCHY, MethodConfig(method="shampoo"),
               MethodConfig(method="blocked_shampoo", block_size=4, graft="adafactor", momentum="bfloat16"),
               MethodConfig(method="extreme_tensoring"), MethodConfig(method="kradagrad")]
    checked = 0
    for _ in range(200):
        mesh = {"data": rng.choice([1, 2, 4]), "model": rng.choice([1, 2, 3])}
        shape = tuple(rng.choice([1, 2, 3, 4, 6, 8, 12, 16]) * rng.choice([1, 2]) for _ in range(rng.choice([1, 2, 3])))
        axes = [None, "data", "model", ("data", "model")]
        spec = tuple(rng.choice(axes) for _ in shape)
        if len({a for e in spec if e for a in ((e,) if isinstance(e, str) else e)}) < sum(
                len((e,) if isinstance(e, str) else e) for e in spec if e):
            continue  # an axis used twice
        cfg = rng.choice(configs)
        layout = state_layout(shape, cfg, OptimizerDefaults(merge_dims=rng.choice([1, 8, 1024])))
        even = even_tensor_bytes(layout, shape, spec, mesh)
        per_device = tensor_device_bytes(layout, shape, spec, mesh)
        if even is None:  # the spec does not divide the shape
            continue
        assert per_device == [even] * len(per_device), (shape, spec, mesh, cfg)
        checked += 1
    assert checked > 60


def test_explain_on_a_mesh_shows_the_largest_devices_bytes():
    """``explain`` on a mesh plan weighs candidates by the largest device's share, as the solver does: Adam's row
    for w (16, 32) split (data, model) over 4 devices shows 1028 B (2 × 2048 / 4 + 4, by hand as above), not the
    whole tensor's 4100; a replicated tensor's row is its whole state."""
    from sketchplan.planner.explain import explain

    model = _model(w=("data", "model"))
    plan = make_plan(model, None, methods=("adam", "blocked_shampoo"), block_sizes=(8,), mesh=MESH,
                     partition_specs={"w": ("data", "model")}, hardware=None)
    by_name = {e.name: e for e in plan.tensors}
    # Adam: exp_avg and exp_avg_sq + 4; without momentum only exp_avg_sq + 4 (w: 2048 B / 4 devices)
    for name, want in (("w", {"adam": 1028, "adam +nomom": 516}), ("r", {"adam": 132, "adam +nomom": 68})):
        ex = explain(plan, model, name)
        assert ex.per_device
        rows = {r.label: r.state_bytes for r in ex.rows}
        assert {k: rows[k] for k in want if k in rows} == {k: v for k, v in want.items() if k in rows}
        assert "adam" in rows
        chosen = next(r for r in ex.rows if r.chosen)
        assert chosen.state_bytes == by_name[name].device_state_bytes
