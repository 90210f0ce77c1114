"""Step time and per-device state bytes of the optax transformations on a 4-device CPU mesh, against
``optax.adamw`` on the same mesh and against the same transformation unsharded (all arrays on one device).

    python benchmarks/jax_mesh.py [--rounds 7] [--steps 10] [--only NAME,...]     → benchmarks/results/jax_mesh.md

Model: a 4-layer MLP's parameters (4 × (512, 512) kernels split over ("data", "model") = (2, 2) on explicit
axes, biases split on "model"), gradients random and fixed. Each round times ``--steps`` jitted steps of every
configuration, in interleaved order; ratios are per round (same load), reported as min / median / max over
rounds. The machine is shared and noisy (its load average is written next to the table): the ratios, not the
absolute times, are the result. Per-device bytes are summed from each state leaf's ``addressable_shards``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from sketchplan.optimizers.jax import adafactor, adam, blocked_shampoo, lion, muon, sketchy, soap  # noqa: E402

D, LAYERS = 512, 4
CONFIGS = {
    "optax.adamw": lambda: optax.adamw(1e-3, weight_decay=0.0),
    "sketchplan adam": lambda: adam(1e-3),
    "blocked_shampoo B=128": lambda: blocked_shampoo(1e-3, block_size=128, precondition_frequency=10),
    "sketchy r=16 B=128": lambda: sketchy(1e-3, rank=16, block_size=128),
    "soap B=128 packed": lambda: soap(3e-3, block_size=128, packed=True, precondition_frequency=10),
    "adafactor": lambda: adafactor(1e-2),
    "lion int8 momentum": lambda: lion(1e-4, momentum="int8"),
    "muon": lambda: muon(1e-3),
    "adam int8 (8-bit)": lambda: adam(1e-3, compress="int8", momentum="int8"),
}


def tree(mesh=None):
    key = jax.random.key(0)
    params = {f"l{i}": {"kernel": jax.random.normal(jax.random.fold_in(key, i), (D, D)) / D**0.5,
                        "bias": jnp.zeros((D,))} for i in range(LAYERS)}
    if mesh is None:
        return params
    specs = {"kernel": P("data", "model"), "bias": P("model")}
    return {k: {n: jax.device_put(v, NamedSharding(mesh, specs[n])) for n, v in layer.items()}
            for k, layer in params.items()}


def per_device_bytes(state) -> list[int]:
    out = [0] * jax.device_count()
    for leaf in jax.tree.leaves(state):
        for s in leaf.addressable_shards:
            out[s.device.id] += s.data.nbytes
    return out


class Runner:
    def __init__(self, name: str, mesh):
        self.mesh = mesh
        self.tx = CONFIGS[name]()
        with self._ctx():
            self.params = tree(mesh)
            self.grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-2) * (1 + jnp.arange(p.shape[-1]) % 7),
                                      self.params)
            self.state = self.tx.init(self.params)
            self.step = jax.jit(lambda g, s, p: self.tx.update(g, s, p)[1], donate_argnums=1)
            self.state = self.step(self.grads, self.state, self.params)  # compile
            jax.block_until_ready(self.state)

    def _ctx(self):
        if self.mesh is None:
            import contextlib
            return contextlib.nullcontext()
        return jax.sharding.set_mesh(self.mesh)

    def time(self, steps: int) -> float:
        with self._ctx():
            t0 = time.perf_counter()
            for _ in range(steps):
                self.state = self.step(self.grads, self.state, self.params)
            jax.block_until_ready(self.state)
        return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "jax_mesh.md"))
    ap.add_argument("--only", default=None, help="comma-separated configuration names (optax.adamw always runs)")
    args = ap.parse_args()
    if args.only:
        keep = {"optax.adamw", *args.only.split(",")}
        for name in [n for n in CONFIGS if n not in keep]:
            del CONFIGS[name]
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    runners = {(n, "mesh"): Runner(n, mesh) for n in CONFIGS}
    runners.update({(n, "one device"): Runner(n, None) for n in CONFIGS if n != "optax.adamw"})
    load_before = os.getloadavg()
    times = {k: [] for k in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(list(runners)))
        for k in order:
            times[k].append(runners[k].time(args.steps))
    load_after = os.getloadavg()

    def stats(values):
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    lines = ["# optax transformations on a 4-device CPU mesh (benchmarks/jax_mesh.py)", "",
             f"jax {jax.__version__}, optax {optax.__version__}; {LAYERS} × ({D}, {D}) kernels + biases, "
             f"explicit mesh (data=2, model=2); {args.rounds} interleaved rounds × {args.steps} steps. "
             f"Load average (1/5/15 min) before {tuple(round(x, 1) for x in load_before)}, after "
             f"{tuple(round(x, 1) for x in load_after)}: a shared, noisy machine with 2 cores emulating 4 "
             "devices, so the step times are CPU-bound and the ratios are what to read.", "",
             "| transformation | where | median step ms | ÷ optax.adamw on the mesh (min / median / max) | "
             "÷ itself on one device (min / median / max) | state bytes per device (max) | state bytes in all |",
             "|---|---|---|---|---|---|---|"]
    base = times[("optax.adamw", "mesh")]
    for (name, where), ts in times.items():
        vs_adamw = stats([t / b for t, b in zip(ts, base)])
        one = times.get((name, "one device"))
        vs_one = stats([t / o for t, o in zip(ts, one)]) if one and where == "mesh" else "—"
        per_dev = per_device_bytes(runners[(name, where)].state)
        total = sum(x.nbytes for x in jax.tree.leaves(runners[(name, where)].state))
        lines.append(f"| {name} | {where} | {statistics.median(ts) * 1e3:.1f} | {vs_adamw} | {vs_one} | "
                     f"{max(per_dev):,} | {total:,} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
