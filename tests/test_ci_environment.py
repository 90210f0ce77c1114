"""In CI (CI=true) every optional dependency the suite uses is installed, so no test skips for a missing one:
the JAX tests skip silently elsewhere (``pytest.importorskip``), never in CI."""

import importlib.util
import os

import pytest


@pytest.mark.skipif(os.environ.get("CI", "").lower() != "true", reason="only in CI (CI=true)")
@pytest.mark.parametrize("module", ["jax", "optax", "transformers", "sklearn", "matplotlib"])
def test_optional_dependencies_are_installed_in_ci(module):
    assert importlib.util.find_spec(module) is not None, f"{module} is missing in CI: its tests would skip"
