"""Run in a subprocess by tests/test_optax_mesh.py: the optax transformations on 4 CPU devices.

``python tests/mesh_workers.py`` prints one JSON object {axis kind: [one object per method]} for explicit and
automatic axes: the per-device state bytes measured from ``addressable_shards`` and predicted by
``methods.mesh_placement`` (written out here from the layouts and the parameters' specs), the specs of the state
leaves, and the largest difference from the same steps run unsharded on one device (computed once, shared by both
kinds). XLA_FLAGS must be set before JAX starts, hence a separate process.
"""

from __future__ import annotations

import json
import math
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from sketchplan.methods import state_layout  # noqa: E402
from sketchplan.methods.layout import dtype_bytes  # noqa: E402
from sketchplan.optimizers.jax import constructors as jx  # noqa: E402
from sketchplan.optimizers.jax.transform import SketchplanState  # noqa: E402

MESH = {"data": 2, "model": 2}
#: Shapes and specs: a matrix split both ways, one split on columns only, a row-split 3-D kernel, a vector, a
#: scalar and an odd-sized matrix nothing divides (its factors stay replicated: 5 and 3 are not multiples of 4).
SHAPES = {"w": (16, 8), "v": (12, 8), "k": (8, 4, 6), "b": (8,), "s": (), "odd": (5, 3)}
SPECS = {"w": ("data", "model"), "v": (None, "model"), "k": ("data",), "b": ("model",), "s": (), "odd": ()}
MATRIX = dict(merge_dims=8, precondition_frequency=2, shampoo_eps=1e-4, start_preconditioning_step=3)
METHODS = {
    "adam": (lambda: jx.adam(1e-2, weight_decay=0.01), "adam", {}),
    "shampoo": (lambda: jx.shampoo(1e-2, **MATRIX), "shampoo", {}),
    "blocked_shampoo": (lambda: jx.blocked_shampoo(1e-2, block_size=4, **MATRIX), "blocked_shampoo",
                        {"block_size": 4}),
    "sketchy": (lambda: jx.sketchy(1e-2, rank=2, graft="adafactor", **MATRIX), "sketchy",
                {"rank": 2, "graft": "adafactor"}),
    "extreme_tensoring": (lambda: jx.extreme_tensoring(1e-2, et_max_dim=4, momentum="float32"),
                          "extreme_tensoring", {"momentum": "float32"}),
    "kradagrad": (lambda: jx.kradagrad(1e-2, **MATRIX), "kradagrad", {}),
    # SOAP with packed statistics (blocks of 4: the block axis of each group splits over the 4 devices)
    "soap": (lambda: jx.soap(1e-2, block_size=4, packed=True, **MATRIX), "soap", {"block_size": 4, "packed": True}),
    "adafactor": (lambda: jx.adafactor(1e-2, momentum="bfloat16"), "adafactor", {"momentum": "bfloat16"}),
    "lion": (lambda: jx.lion(1e-2, momentum="int8"), "lion", {"momentum": "int8"}),  # uint8 codes + block maxima
    "muon": (lambda: jx.muon(1e-2, compress="bfloat16"), "muon", {"compress": "bfloat16"}),  # AdamW off matrices
    "adam_int8": (lambda: jx.adam(1e-2, compress="int8", momentum="int8"), "adam",
                  {"compress": "int8", "momentum": "int8"}),
}
STEPS = 4
BUDGET = "12KiB"  # the planned mix (``planned``)


def expected_device_bytes(method: str, cfg_fields: dict) -> list[int]:
    """The rule of methods.mesh_placement, written out independently: a layout tensor shaped like its parameter
    named exp_avg/exp_avg_sq/momentum/graft_exp_avg_sq/variance (in any dtype: bfloat16, uint8 codes) is split
    like the parameter; any other is split over all 4 devices when its first dimension (the block axis of stacked
    blocks) is a positive multiple of 4, else replicated. Per device (all shapes here divide evenly, so every
    device holds the same)."""
    from sketchplan.methods.layout import MethodConfig, OptimizerDefaults

    cfg = MethodConfig(method=method, **cfg_fields)
    opts = OptimizerDefaults(**{**MATRIX, "et_max_dim": 4} if method != "adam" else {})
    total = 4  # the step counter, replicated
    for name, shape in SHAPES.items():
        split = math.prod(MESH[a] for a in SPECS[name] if a is not None)
        for t in state_layout(shape, cfg, opts):
            n = math.prod(t.shape) * dtype_bytes(t.dtype)
            if t.shape == shape and t.name in ("exp_avg", "exp_avg_sq", "momentum", "graft_exp_avg_sq", "variance"):
                total += n // split
            elif t.shape and t.shape[0] >= 4 and t.shape[0] % 4 == 0:
                total += n // 4
            else:
                total += n
    return [total] * 4


def setup():
    """Parameters, 4 steps of gradients, and each method's one-device run (the reference of both kinds)."""
    rng = np.random.default_rng(7)
    params0 = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}
    grads = [{k: jnp.asarray(rng.standard_normal(s) * (1 + t), jnp.float32) for k, s in SHAPES.items()}
             for t in range(STEPS)]
    refs = {}
    for name, (make, _, _) in METHODS.items():
        tx = make()
        state, p = tx.init(params0), params0
        step = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p))
        for g in grads:
            u, state = step(g, state, p)
            p = optax.apply_updates(p, u)
        refs[name] = (p, state)
    return params0, grads, refs


def run(kind: str, params0, grads, refs) -> list[dict]:
    types = (AxisType.Explicit if kind == "explicit" else AxisType.Auto,) * 2
    mesh = jax.make_mesh(tuple(MESH.values()), tuple(MESH), axis_types=types)
    shard = {k: NamedSharding(mesh, P(*SPECS[k])) for k in SHAPES}
    results = []
    for name, (make, method, cfg_fields) in METHODS.items():
        tx = make()
        ref_params, ref_state = refs[name]
        with jax.sharding.set_mesh(mesh):
            p = {k: jax.device_put(v, shard[k]) for k, v in params0.items()}
            state = tx.init(p)
            # automatic axes: the state keeps the layout init gave it (jit's out_shardings), as one would do
            out = None if kind == "explicit" else (jax.tree.map(lambda x: x.sharding, p),
                                                   jax.tree.map(lambda x: x.sharding, state))

            def train(g, s, p, tx=tx):
                u, s = tx.update(g, s, p)
                return optax.apply_updates(p, u), s

            train = jax.jit(train, out_shardings=out)
            for g in grads:
                p, state = train({k: jax.device_put(v, shard[k]) for k, v in g.items()}, state, p)
            jax.block_until_ready((p, state))
        per_device = [0] * 4
        for leaf in jax.tree.leaves(state):
            for s in leaf.addressable_shards:
                per_device[s.device.id] += s.data.nbytes
        sp = next(s for s in state if isinstance(s, SketchplanState))
        elementwise = {}
        for field in ("mu", "nu"):
            for k, leaf in getattr(sp, field).items():
                if leaf.size:
                    elementwise[f"{field}/{k}"] = [list(map(_entry, leaf.sharding.spec)),
                                                   max(s.data.size for s in leaf.addressable_shards),
                                                   max(s.data.size for s in p[k].addressable_shards)]
        param_err = max(float(jnp.max(jnp.abs(np.asarray(p[k]) - ref_params[k])) / jnp.max(jnp.abs(ref_params[k])))
                        for k in SHAPES)
        state_err = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
                              / max(float(np.max(np.abs(np.asarray(b, np.float64)))), 1e-30))
                        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state))
                        if a.size and jnp.issubdtype(a.dtype, jnp.floating))
        one_device = sum(x.nbytes for x in jax.tree.leaves(ref_state))
        results.append({"method": name, "per_device": per_device, "one_device": one_device,
                        "expected": expected_device_bytes(method, cfg_fields),
                        "elementwise": elementwise, "param_err": param_err, "state_err": state_err})
    if kind == "explicit":
        results.append(planned(mesh, params0, grads, shard))
        # issue 19's methods, 8-bit state: the planner's per-device figure for them too
        results.append(planned(mesh, params0, grads, shard, "plan19", None,
                               methods=("soap", "adafactor", "lion", "muon"), compress=("int8",),
                               max_step_vs_adam=None))
    return results


def planned(mesh, params0, grads, shard, name: str = "plan", budget=BUDGET, **plan_kw) -> dict:
    """A planned mix of methods (make_plan under a budget) built with build_optax: each device's measured bytes
    against planner.mesh.device_state_bytes."""
    from sketchplan import build_optax
    from sketchplan.methods import OptimizerDefaults
    from sketchplan.optimizers.jax.placement import measured_device_bytes, specs_by_name
    from sketchplan.planner import make_plan
    from sketchplan.planner.mesh import device_state_bytes

    shapes = jax.eval_shape(lambda: params0)
    plan = make_plan(shapes, budget, ranks=(2,), block_sizes=(4,), defaults=OptimizerDefaults(**MATRIX), **plan_kw)
    tx = build_optax(plan, shapes)
    with jax.sharding.set_mesh(mesh):
        p = {k: jax.device_put(v, shard[k]) for k, v in params0.items()}
        state = tx.init(p)
        step = jax.jit(tx.update)
        for g in grads[:2]:
            u, state = step({k: jax.device_put(v, shard[k]) for k, v in g.items()}, state, p)
        jax.block_until_ready(state)
    return {"method": name, "methods": sorted({e.method or "frozen" for e in plan.tensors}),
            "per_device": measured_device_bytes(state, mesh),
            "expected": device_state_bytes(plan, MESH, specs_by_name(p))}


def _entry(e):
    return list(e) if isinstance(e, tuple) else e


if __name__ == "__main__":
    data = setup()
    print(json.dumps({kind: run(kind, *data) for kind in sys.argv[1:] or ("explicit", "auto")}))
