"""What each optimizer method *is*, framework-free: one module per method.

Each module (``adam``, ``shampoo``, ``blocked_shampoo``, ``sketchy``, ``extreme_tensoring``, ``kradagrad``,
``soap``) declares, as pure arithmetic on shapes:

- ``layout(shape, cfg, opts) -> list[StateTensor]``: the exact state tensors one parameter gets — the single
  source of truth for memory: the planner counts these bytes and the torch and JAX backends allocate these
  tensors (``optimizers.torch.state.allocate``, ``optimizers.jax.state``);
- ``workspace_bytes(shape, cfg, opts)``: the largest transient of one step;
- ``kernel_calls(shape, cfg, opts) -> list[KernelCall]``: the kernels one step runs and how often (timed by the
  hardware profiles, ``kernels.calls``);
- ``grid(ranks, block_sizes)``: the per-tensor options the planner tries; ``MATRIX`` (Kronecker-factored: takes
  graft options unless ``GRAFTED = False``, as SOAP),
  ``SCORE_FACTOR`` and, for matrix methods, ``kept_rank``: the inputs of the quality score
  (``planner.quality``).

The options themselves (``MethodConfig`` per tensor, ``OptimizerDefaults`` per plan) live in ``layout``;
merging and blocking of shapes (ALGORITHMS.md §0) in ``blocking``. Nothing here imports torch, JAX or numpy.
"""

from __future__ import annotations

from types import ModuleType

from . import adam, blocked_shampoo, extreme_tensoring, kradagrad, shampoo, sketchy
from . import soap  # issue 19b
from .layout import (
    DTYPE_BYTES,
    GRAFTS,
    MATRIX_METHODS,
    METHODS,
    MOMENTA,
    SKIP_COUNTER,
    MethodConfig,
    OptimizerDefaults,
    StateTensor,
    dtype_bytes,
    total_bytes,
)

METHOD_MODULES: dict[str, ModuleType] = {
    "adam": adam,
    "shampoo": shampoo,
    "blocked_shampoo": blocked_shampoo,
    "sketchy": sketchy,
    "extreme_tensoring": extreme_tensoring,
    "kradagrad": kradagrad,
}
METHOD_MODULES["soap"] = soap  # issue 19b


def state_layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """The exact state tensors ``cfg.method`` allocates for a parameter of ``shape``."""
    return METHOD_MODULES[cfg.method].layout(tuple(int(d) for d in shape), cfg, opts)


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    """Bytes of the largest transient temporary one step of ``cfg.method`` creates for this parameter."""
    return METHOD_MODULES[cfg.method].workspace_bytes(tuple(int(d) for d in shape), cfg, opts)


def workspace_of(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults, param_dtype: str = "float32",
                 scratch: bool = True) -> int:
    """``workspace_bytes`` for a parameter of ``param_dtype``; ``scratch=False`` leaves out kernels' internal work
    buffers (the tensor-level figure torch's ``MemTracker`` sees)."""
    return METHOD_MODULES[cfg.method].workspace_bytes(tuple(int(d) for d in shape), cfg, opts, param_dtype, scratch)


def group_workspace_bytes(tensors: list[tuple[tuple[int, ...], str]], cfg: MethodConfig, opts: OptimizerDefaults,
                          scratch: bool = True) -> int:
    """High-water mark of one step of a param group of (shape, parameter dtype) tensors that share ``cfg``.

    Adam steps the group with multi-tensor kernels (``adam.group_workspace_bytes``); the other methods step
    tensor after tensor, so the group's figure is its largest tensor's, or the sanitising pass over the group
    (a float32 sum per tensor, their stack and flags: at most 16 bytes per tensor) when that is larger.
    """
    if cfg.method == "adam":
        return adam.group_workspace_bytes([(tuple(int(d) for d in s), dt) for s, dt in tensors], cfg, opts)
    return max([16 * len(tensors)] + [workspace_of(s, cfg, opts, dt, scratch) for s, dt in tensors])


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list:
    """The kernel calls one step of ``cfg.method`` makes for a parameter of ``shape`` (``kernels.calls``)."""
    return METHOD_MODULES[cfg.method].kernel_calls(tuple(int(d) for d in shape), cfg, opts)


def initial_identity(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> dict[str, float]:
    """State tensors of ``cfg.method`` that start as c·I (batched over their leading block dimension) instead
    of zero, by name → c: Shampoo's roots (I), KrADagrad's inverse statistics (I/ε) and roots. Both backends
    initialise from this."""
    fn = getattr(METHOD_MODULES[cfg.method], "initial_identity", None)
    return fn(tuple(int(d) for d in shape), cfg, opts) if fn is not None else {}


__all__ = [
    "DTYPE_BYTES", "GRAFTS", "MATRIX_METHODS", "METHODS", "METHOD_MODULES", "MOMENTA", "MethodConfig",
    "OptimizerDefaults", "SKIP_COUNTER", "StateTensor", "dtype_bytes", "initial_identity", "kernel_calls", "state_layout",
    "total_bytes", "workspace_bytes", "workspace_of", "group_workspace_bytes",
]
