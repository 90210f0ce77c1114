"""optax transformations for every method, built from the same layouts and kernels as the torch optimizers.

Importing this sub-package imports JAX and optax (``import sketchplan`` and ``sketchplan.optimizers`` never do),
never torch. A whole plan becomes one transformation with ``sketchplan.build_optax`` (``sketchplan.build``).

- ``adam``, ``shampoo``, ``blocked_shampoo``, ``sketchy``, ``extreme_tensoring``, ``kradagrad``, ``soap``: one method for
  every parameter;
- ``SketchplanState``: their state (an int32 step count and each tensor's layout arrays).

See docs/jax.md.
"""

from __future__ import annotations

from .constructors import adam, blocked_shampoo, extreme_tensoring, kradagrad, shampoo, sketchy
from .constructors import soap  # issue 19b
from .issue19_constructors import adafactor, lion, muon  # issue 19 part A
from .transform import STEPS, SketchplanState, sketchplan_transform, uniform_transform

__all__ = ["adafactor", "lion", "muon", "STEPS", "SketchplanState", "adam", "blocked_shampoo", "extreme_tensoring",
           "kradagrad", "shampoo", "sketchplan_transform", "sketchy", "soap", "uniform_transform"]
