"""docs/jax.md's Python examples run as written, in order, in one namespace (as a reader would paste them):
the optax idioms (chain, masked weight decay, inject_hyperparams, tree_map_params), the state-bytes check, the
mesh example (one device here; tests/test_optax_mesh.py covers four) and the flax nnx Optimizer and linen
TrainState loops."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("flax")

DOC = Path(__file__).parent.parent / "docs" / "jax.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_python_example_in_docs_jax_runs():
    found = blocks()
    assert len(found) >= 8  # loop, aliases, inject_hyperparams, bytes, tree_map_params, mesh, nnx, linen
    namespace: dict = {"__name__": "docs_jax"}
    for i, code in enumerate(found):
        try:
            exec(compile(code, f"{DOC}:block{i}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"docs/jax.md python block {i} failed: {e!r}\n{code}") from e


def test_tree_map_params_maps_the_params_specs_onto_mu_and_nu():
    import jax
    import jax.numpy as jnp
    import optax

    from sketchplan.optimizers.jax import SketchplanState, sketchy

    params = {"w": jnp.ones((8, 4)), "b": jnp.ones((4,))}
    tx = sketchy(1e-3, rank=2, momentum="none")
    labels = {"w": "W", "b": "B"}
    out = optax.tree_map_params(tx, lambda p, label: label, tx.init(params), labels,
                                transform_non_params=lambda _: "other")
    sp = out[0]
    assert isinstance(sp, SketchplanState)
    assert sp.mu == labels and sp.nu == labels and sp.count == "other" and sp.factors == "other"
    # the real state: no momentum here, so mu holds 0-byte stand-ins shaped (0, …) with the params' ranks
    real = tx.init(params)[0]
    assert jax.tree.map(lambda x: x.shape, real.mu) == {"w": (0, 0), "b": (0,)}
    assert jax.tree.map(lambda x: x.shape, real.nu) == {"w": (8, 4), "b": (4,)}


def test_masked_weight_decay_spares_masked_leaves_and_update_needs_no_params_without_it():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sketchplan.optimizers.jax import adam

    params = {"w": jnp.full((3, 2), 2.0), "b": jnp.full((2,), 2.0)}
    zero = jax.tree.map(jnp.zeros_like, params)  # zero gradients: the update is the decay alone
    tx = adam(0.1, weight_decay=0.5, mask={"w": True, "b": False})
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * 2.0, rtol=1e-6)  # −η λ p, by hand
    np.testing.assert_array_equal(updates["b"], 0.0)
    plain = adam(0.1)
    updates, _ = plain.update(zero, plain.init(params))  # no params needed
    np.testing.assert_array_equal(updates["w"], 0.0)


def test_a_traced_structural_option_is_refused_naming_static_args():
    import jax
    import jax.numpy as jnp
    import optax

    from sketchplan.errors import UserError
    from sketchplan.optimizers.jax import sketchy

    params = {"w": jnp.ones((8, 4))}
    tx = optax.inject_hyperparams(sketchy)(learning_rate=1e-3, rank=2)
    state = tx.init(params)  # concrete there: fine
    with pytest.raises(UserError, match="static_args"):
        jax.jit(tx.update)(params, state, params)
    tx = optax.inject_hyperparams(sketchy, static_args=("rank",))(learning_rate=1e-3, rank=2)
    jax.jit(tx.update)(params, tx.init(params), params)


def test_a_tree_whose_key_paths_collide_is_refused():
    import jax
    import jax.numpy as jnp

    from sketchplan import build_optax
    from sketchplan.errors import UserError
    from sketchplan.methods import MethodConfig
    from sketchplan.optimizers.jax import adam
    from sketchplan.planner import uniform_plan

    tree = {"a/b": jnp.ones((2,)), "a": {"b": jnp.ones((3,))}}
    tx = adam(1e-2)  # by position: both leaves keep their own state
    state = tx.init(tree)
    updates, state = tx.update(jax.tree.map(jnp.ones_like, tree), state)
    assert updates["a/b"].shape == (2,) and updates["a"]["b"].shape == (3,)
    with pytest.raises(UserError, match="both named 'a/b'"):
        plan = uniform_plan({"a": {"b": jax.ShapeDtypeStruct((3,), jnp.float32)}}, MethodConfig(method="adam"))
        build_optax(plan, tree)
