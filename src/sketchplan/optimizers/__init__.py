"""Optimizers: one module per method, each owning its state layout (the one source of truth for memory),
its update rule and its torch optimizer class; ``build_optimizer`` builds one optimizer for a whole model from
a plan.
"""

from __future__ import annotations

from types import ModuleType

from . import adam, blocked_shampoo, extreme_tensoring, kradagrad, shampoo, sketchy
from .adam import Adam
from .base import SketchplanOptimizer
from .blocked_shampoo import BlockedShampoo
from .extreme_tensoring import ExtremeTensoring
from .factory import build_optimizer
from .kradagrad import KrADagrad
from .layout import (
    GRAFTS,
    MATRIX_METHODS,
    METHODS,
    MOMENTA,
    MethodConfig,
    OptimizerDefaults,
    StateTensor,
    dtype_bytes,
    total_bytes,
)
from .shampoo import Shampoo
from .sketchy import Sketchy
from .state import allocate

METHOD_MODULES: dict[str, ModuleType] = {
    "adam": adam,
    "shampoo": shampoo,
    "blocked_shampoo": blocked_shampoo,
    "sketchy": sketchy,
    "extreme_tensoring": extreme_tensoring,
    "kradagrad": kradagrad,
}


def state_layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """The exact state tensors ``cfg.method`` allocates for a parameter of ``shape``."""
    return METHOD_MODULES[cfg.method].layout(tuple(int(d) for d in shape), cfg, opts)


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    """Bytes of the largest transient temporary one step of ``cfg.method`` creates for this parameter."""
    return METHOD_MODULES[cfg.method].workspace_bytes(tuple(int(d) for d in shape), cfg, opts)


__all__ = [
    "Adam", "BlockedShampoo", "ExtremeTensoring", "GRAFTS", "KrADagrad", "MATRIX_METHODS", "METHODS", "MOMENTA",
    "METHOD_MODULES", "MethodConfig", "OptimizerDefaults", "Shampoo", "Sketchy", "SketchplanOptimizer",
    "StateTensor", "allocate", "build_optimizer", "dtype_bytes", "state_layout", "total_bytes",
    "workspace_bytes",
]
