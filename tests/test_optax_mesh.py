"""The optax transformations on a 4-device CPU mesh (explicit and automatic axes): every method runs — Adam,
Shampoo, blocked Shampoo, Sketchy, extreme tensoring, KrADagrad, SOAP (packed statistics), Adafactor, Lion (int8
momentum), Muon (bfloat16 second moments off matrices) and 8-bit Adam — each device holds exactly the bytes
``methods.mesh_placement`` predicts, elementwise state is sharded like its parameter (no mu/nu shard larger than
its parameter's), and the results match the one-device run.

The mesh needs ``--xla_force_host_platform_device_count=4`` before JAX starts, so tests/mesh_workers.py runs in
one subprocess (the one-device references once, then both axis types). Compiling 11 configurations × (one device
+ two meshes) takes minutes of the shared CPUs: this file is slower than the others.

Tolerances (float32): parameters after 4 steps within 1e-5 of the one-device run relative to their largest
entry (observed ≤ 6e-8), every floating state leaf within 5e-5 relative to its largest entry (eigh and the
Gram products sum in another order when the blocks are split over devices; observed ≤ 2.9e-6, SOAP's). ε = 1e-4
(``mesh_workers.MATRIX``): with 1e-6, unblocked Shampoo's bias momentum — an 8×8 statistic of rank 4 after 4
steps, whose ε-regularised root magnifies the order of summation — differed by 4.2e-5, too near the bound.
uint8 codes are compared through the parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

HERE = Path(__file__).parent
KINDS = ("explicit", "auto")


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(HERE / "mesh_workers.py"), *KINDS], capture_output=True, text=True,
                          env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {kind: {r["method"]: r for r in data[kind]} for kind in KINDS}


METHODS = ["adam", "shampoo", "blocked_shampoo", "sketchy", "extreme_tensoring", "kradagrad", "soap", "adafactor",
           "lion", "muon", "adam_int8"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_per_device_bytes_equal_prediction(results, kind, method):
    r = results[kind][method]
    assert r["per_device"] == r["expected"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_elementwise_state_is_sharded_like_its_parameter(results, kind, method):
    """Every non-empty mu/nu leaf has its parameter's spec and no shard larger than the parameter's shard."""
    specs = {"w": ["data", "model"], "v": [None, "model"], "k": ["data", None, None], "b": ["model"], "s": [],
             "odd": [None, None]}
    r = results[kind][method]
    assert r["elementwise"], "every method here keeps an elementwise moment"
    for key, (spec, shard, param_shard) in r["elementwise"].items():
        name = key.split("/")[1]
        strip = lambda s: list(s[: max([i + 1 for i, e in enumerate(s) if e is not None], default=0)])  # noqa: E731
        assert strip(spec) == strip(specs[name]), key
        assert shard == param_shard, key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_results_match_one_device(results, kind, method):
    r = results[kind][method]
    assert r["param_err"] <= 1e-5
    assert r["state_err"] <= 5e-5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_no_device_holds_the_whole_state(results, kind, method):
    """Each device holds less than the one-device state (a replicated layout would hold all of it)."""
    r = results[kind][method]
    assert max(r["per_device"]) < r["one_device"]


def test_planned_mix_per_device_bytes_equal_the_planners_prediction(results):
    """make_plan's mix (Adam, Shampoo, blocked Sketchy) built with build_optax on the explicit mesh: the bytes
    each device holds (addressable_shards) equal planner.mesh.device_state_bytes for the params' specs."""
    r = results["explicit"]["plan"]
    assert len(r["methods"]) >= 2, r["methods"]
    assert r["per_device"] == r["expected"]


def test_planned_soap_muon_mix_per_device_bytes_equal_the_planners_prediction(results):
    """A plan over SOAP, Adafactor, Lion and Muon with int8 second moments (no budget: each tensor's best
    candidate), built with build_optax on the explicit mesh: measured per-device bytes = device_state_bytes."""
    r = results["explicit"]["plan19"]
    assert set(r["methods"]) - {"frozen"} <= {"soap", "adafactor", "lion", "muon"} and r["methods"], r["methods"]
    assert r["per_device"] == r["expected"]


def test_device_state_bytes_by_hand():
    """One (8, 4) Adam tensor split ("data", None) on data=2,model=2: exp_avg and exp_avg_sq are 128 B each,
    halved per device (64 + 64), plus nonfinite_skips (4 B, replicated) and the step count (4 B)."""
    import jax
    import jax.numpy as jnp

    from sketchplan.errors import UserError
    from sketchplan.methods import MethodConfig
    from sketchplan.planner import uniform_plan
    from sketchplan.planner.mesh import device_state_bytes, parse_mesh

    mesh = parse_mesh("data=2,model=2")
    assert mesh == {"data": 2, "model": 2} and list(mesh) == ["data", "model"]
    plan = uniform_plan({"w": jax.ShapeDtypeStruct((8, 4), jnp.float32)}, MethodConfig(method="adam"))
    assert device_state_bytes(plan, mesh, {"w": ("data", None)}) == [64 + 64 + 4 + 4] * 4
    assert device_state_bytes(plan, mesh, {}) == [128 + 128 + 4 + 4] * 4  # replicated
    with pytest.raises(UserError, match="data=4,model=2"):
        parse_mesh("data4")
    with pytest.raises(UserError, match="lacks"):
        device_state_bytes(plan, mesh, {"w": ("pipe",)})
