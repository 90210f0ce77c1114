"""The optax transformations on a 4-device CPU mesh (explicit and automatic axes): every method runs, each device
holds exactly the bytes ``methods.mesh_placement`` predicts, elementwise state is sharded like its parameter,
and the results match the one-device run.

The mesh needs ``--xla_force_host_platform_device_count=4`` before JAX starts, so tests/mesh_workers.py runs in
two subprocesses (one per axis type, in parallel). Compiling 6 methods × (mesh + one device) takes about a
minute of the shared CPUs: this file is slower than the others.

Tolerances (float32): parameters after 4 steps within 1e-5 of the one-device run relative to their largest
entry (observed ≤ 1e-7), every floating state leaf within 5e-5 relative to its largest entry (observed ≤ 6e-6:
eigh and the Gram products sum in another order when the blocks are split over devices).
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
    procs = {k: subprocess.Popen([sys.executable, str(HERE / "mesh_workers.py"), k], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for k in KINDS}
    out = {}
    for kind, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        out[kind] = {r["method"]: r for r in json.loads(stdout.strip().splitlines()[-1])}
    return out


METHODS = ["adam", "shampoo", "blocked_shampoo", "sketchy", "extreme_tensoring", "kradagrad"]


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
