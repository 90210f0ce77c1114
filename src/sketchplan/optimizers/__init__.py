"""The optimizer backends: ``optimizers.torch`` (``torch.optim.Optimizer`` classes) and ``optimizers.jax`` (optax
transformations), both built from the framework-free method descriptions in ``sketchplan.methods``.

``from sketchplan.optimizers import Sketchy`` still gives the torch class: the names below are imported from
``optimizers.torch`` on first use, so importing this package imports no framework. A plan becomes an optimizer
with ``sketchplan.build_optimizer`` / ``sketchplan.build_optax`` (``sketchplan.build``).
"""

from __future__ import annotations

_TORCH = ("Adam", "BlockedShampoo", "ExtremeTensoring", "KrADagrad", "Shampoo", "Sketchy", "SketchplanOptimizer")

__all__ = list(_TORCH)


def __getattr__(name: str):
    if name in _TORCH:
        from ..errors import require

        require("torch", f"sketchplan.optimizers.{name}")
        from . import torch as backend

        return getattr(backend, name)
    raise AttributeError(f"module 'sketchplan.optimizers' has no attribute {name!r}")
