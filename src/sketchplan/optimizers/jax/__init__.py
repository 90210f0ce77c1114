"""optax transformations for every method, built from the same layouts and kernels as the torch optimizers.

Importing this sub-package imports JAX and optax (``import sketchplan`` and ``sketchplan.optimizers`` never do),
never torch. A whole plan becomes one transformation with ``sketchplan.build_optax`` (``sketchplan.build``).

- ``scale_by_adam``, ``scale_by_shampoo``, ``scale_by_blocked_shampoo``, ``scale_by_sketchy``,
  ``scale_by_extreme_tensoring``, ``scale_by_kradagrad``: direction-only transformations for ``optax.chain``;
- ``adam``, ``shampoo``, ``blocked_shampoo``, ``sketchy``, ``extreme_tensoring``, ``kradagrad``: the same with
  ``learning_rate`` (float or schedule) and ``weight_decay`` (with ``mask``);
- ``SketchplanState``: the state of the direction transformations (count, ``mu``/``nu`` shaped like the
  parameters, per-leaf ``factors``), placed on a device mesh by ``methods.mesh_placement``'s rule.

See docs/jax.md.
"""

from __future__ import annotations

from .constructors import (
    adam, blocked_shampoo, extreme_tensoring, kradagrad, scale_by_adam, scale_by_blocked_shampoo,
    scale_by_extreme_tensoring, scale_by_kradagrad, scale_by_shampoo, scale_by_sketchy, shampoo, sketchy,
    with_learning_rate,
)
from .transform import STEPS, SketchplanState, scale_by_assignment, scale_by_uniform

__all__ = ["STEPS", "SketchplanState", "adam", "blocked_shampoo", "extreme_tensoring", "kradagrad",
           "scale_by_adam", "scale_by_assignment", "scale_by_blocked_shampoo", "scale_by_extreme_tensoring",
           "scale_by_kradagrad", "scale_by_shampoo", "scale_by_sketchy", "scale_by_uniform", "shampoo", "sketchy",
           "with_learning_rate"]
