"""sketchplan: which optimizer fits this model on this GPU, at which rank or block size, and how fast is its step.

Public API (imported lazily so that ``import sketchplan`` stays cheap):
``analyze``, ``make_plan``, ``uniform_plan``, ``load_model``, ``Plan``, ``build_optimizer``, ``check``,
``probe``, ``build_optax`` (JAX/optax; imports jax only when used).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": ("sketchplan.planner.analysis", "analyze"),
    "make_plan": ("sketchplan.planner.make", "make_plan"),
    "uniform_plan": ("sketchplan.planner.make", "uniform_plan"),
    "load_model": ("sketchplan.planner.sources", "load_model"),
    "Plan": ("sketchplan.planner.plan", "Plan"),
    "build_optimizer": ("sketchplan.build", "build_optimizer"),
    "build_optax": ("sketchplan.build", "build_optax"),
    "UserError": ("sketchplan.errors", "UserError"),
    "probe": ("sketchplan.planner.probe", "probe"),
    "check": ("sketchplan.verify", "check"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sketchplan' has no attribute {name!r}")
