"""In a virtualenv with only the core package (``core``) or only the ``jax`` extra (``jax``): planning works and
torch is not there. Run by .ci/run: ``SKETCHPLAN_INSTALL_CHECK=core|jax python -m pytest tests/install``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

KIND = os.environ.get("SKETCHPLAN_INSTALL_CHECK", "")
ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "examples" / "shapes.yaml"


def test_torch_is_not_installed():
    assert importlib.util.find_spec("torch") is None
    if KIND == "core":
        assert importlib.util.find_spec("jax") is None and importlib.util.find_spec("numpy") is None


def test_cli_plans_a_shapes_file(tmp_path):
    out = tmp_path / "plan.yaml"
    r = subprocess.run([sys.executable, "-m", "sketchplan", "plan", "--model", str(SHAPES), "--memory-budget",
                        "1GiB", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from sketchplan.planner.plan import Plan

    plan = Plan.load(out)
    assert len(plan.tensors) == 4 and plan.totals.peak_bytes <= 2**30


def test_torch_backend_names_its_extra():
    from sketchplan.errors import MissingExtra
    from sketchplan.optimizers import __getattr__ as lazy

    with pytest.raises(MissingExtra, match=r"pip install 'sketchplan\[torch\]'"):
        lazy("Sketchy")


@pytest.mark.skipif(KIND != "jax", reason="only with the jax extra")
def test_plan_a_jax_factory_and_build_optax(tmp_path):
    out = tmp_path / "jax-plan.yaml"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "sketchplan", "plan", "--model", "examples.jax_models:jax_mlp",
                        "--memory-budget", "1GiB", "--out", str(out)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    import jax
    import optax

    import sketchplan

    sys.path.insert(0, str(ROOT))
    from examples.jax_models import init_mlp

    params = init_mlp(jax.random.key(0))
    plan = sketchplan.Plan.load(out)
    tx = sketchplan.build_optax(plan, params)
    state = tx.init(params)
    grads = jax.tree.map(jax.numpy.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert all(bool(jax.numpy.isfinite(x).all()) for x in jax.tree.leaves(new))
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert nbytes == plan.totals.state_bytes + 4  # the plan's state and one int32 step counter
