"""optax transformations for every method, built from the same layouts and kernels as the torch optimizers.

Importing this sub-package imports JAX and optax (``import sketchplan`` and ``sketchplan.optimizers`` never do),
never torch. A whole plan becomes one transformation with ``sketchplan.build_optax`` (``sketchplan.build``).

- ``scale_by_adam``, ``scale_by_shampoo``, ``scale_by_blocked_shampoo``, ``scale_by_sketchy``,
  ``scale_by_extreme_tensoring``, ``scale_by_kradagrad``, ``scale_by_soap``, ``scale_by_adafactor``,
  ``scale_by_lion``, ``scale_by_muon``: direction-only transformations for ``optax.chain``;
- ``adam``, ``shampoo``, ``blocked_shampoo``, ``sketchy``, ``extreme_tensoring``, ``kradagrad``, ``soap``,
  ``adafactor``, ``lion``, ``muon``: the same with ``learning_rate`` (float or schedule) and ``weight_decay``
  (with ``mask``);
- ``SketchplanState``: the state of the direction transformations (count, ``mu``/``nu`` shaped like the
  parameters, per-leaf ``factors``), placed on a device mesh by ``methods.mesh_placement``'s rule.

See docs/jax.md.
"""

from __future__ import annotations

from .constructors import (
    adafactor, adam, blocked_shampoo, extreme_tensoring, kradagrad, lion, muon, scale_by_adafactor, scale_by_adam,
    scale_by_blocked_shampoo, scale_by_extreme_tensoring, scale_by_kradagrad, scale_by_lion, scale_by_muon,
    scale_by_shampoo, scale_by_sketchy, scale_by_soap, shampoo, sketchy, soap, with_learning_rate,
)
from .transform import STEPS, SketchplanState, scale_by_assignment, scale_by_uniform, tensor_state

__all__ = ["STEPS", "SketchplanState", "adafactor", "adam", "blocked_shampoo", "extreme_tensoring", "kradagrad",
           "lion", "muon", "scale_by_adafactor", "scale_by_adam", "scale_by_assignment", "scale_by_blocked_shampoo",
           "scale_by_extreme_tensoring", "scale_by_kradagrad", "scale_by_lion", "scale_by_muon", "scale_by_shampoo",
           "scale_by_sketchy", "scale_by_soap", "scale_by_uniform", "shampoo", "sketchy", "soap", "tensor_state",
           "with_learning_rate"]
