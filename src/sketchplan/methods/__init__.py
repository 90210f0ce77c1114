"""What each optimizer method *is*, framework-free: one module per method.

Each module (``adam``, ``shampoo``, ``blocked_shampoo``, ``sketchy``, ``extreme_tensoring``, ``kradagrad``,
``soap``; ``adafactor``, ``lion``, ``muon``) declares, as pure arithmetic on shapes:

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
merging and blocking of shapes (docs/algorithms.md, Shapes) in ``blocking``; compressed storage of moments (bfloat16,
8-bit blockwise), which applies to every method around its own layout, in ``compression``. Nothing here imports torch, JAX or numpy.

``workspace_of`` is a pure function of hashable arguments (shapes, frozen ``MethodConfig``/``OptimizerDefaults``)
and remembers its last ``MEMO_SIZE`` answers (small integers): a plan asks for the same (shape, configuration)
many times (every tensor of a repeated layer, every what-if, each re-check of the solver's choice), and the answer
is the same replay each time. Layouts and kernel calls are not memoised: the planner asks for each once per
candidate (the step timer keeps its own answers), and keeping their ~10^5 small objects alive would make every
garbage collection walk them.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

from . import adam, blocked_shampoo, extreme_tensoring, kradagrad, shampoo, sketchy
from . import soap  # issue 19b
from . import adafactor, lion, muon  # issue 19 part A
from .compression import is_compressed, plain_config, stored_layout, workspace_extra
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
    # issue 19 part A
    "adafactor": adafactor,
    "lion": lion,
    "muon": muon,
}
METHOD_MODULES["soap"] = soap  # issue 19b

#: answers each dispatcher remembers (a GPT-2 plan asks about ~10^4 distinct (shape, configuration) pairs)
MEMO_SIZE = 1 << 16


def _dims(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def plain_layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """The layout the method's rule computes on: ``state_layout`` with compressed tensors decoded
    (``methods.compression``)."""
    return METHOD_MODULES[cfg.method].layout(tuple(int(d) for d in shape), plain_config(cfg), opts)


def state_layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """The exact state tensors ``cfg.method`` allocates for a parameter of ``shape`` (compressed moments stored as
    ``methods.compression`` says)."""
    return stored_layout(plain_layout(shape, cfg, opts), cfg)


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    """Bytes of the largest transient temporary one step of ``cfg.method`` creates for this parameter."""
    return workspace_of(shape, cfg, opts)


def workspace_of(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults, param_dtype: str = "float32",
                 scratch: bool = True) -> int:
    """``workspace_bytes`` for a parameter of ``param_dtype``; ``scratch=False`` leaves out kernels' internal work
    buffers (the tensor-level figure torch's ``MemTracker`` sees). With compressed state: the rule's own figure on
    the plain configuration on top of the decoded copies, or the encode-back (``compression.workspace_extra``)."""
    return _workspace_of(_dims(shape), cfg, opts, param_dtype, scratch)


def clear_caches() -> None:
    """Empty every memo of the method facts (workspaces, replay steps, matrix plans and partitions). Answers never
    depend on them; a test session clears them so that it runs the code under test, not answers remembered by
    the process it was forked from (mutmut forks each mutant's session from one that ran the original code)."""
    from . import batching, blocking, transients

    _workspace_of.cache_clear()
    batching.group_batches.cache_clear()
    blocking.cached_plan.cache_clear()
    blocking.cached_partition.cache_clear()
    transients.clear_memos()


@lru_cache(maxsize=MEMO_SIZE)
def _workspace_of(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults, param_dtype: str,
                  scratch: bool) -> int:
    plain = plain_config(cfg)
    ws = METHOD_MODULES[cfg.method].workspace_bytes(shape, plain, opts, param_dtype, scratch)
    if plain is cfg:
        return ws
    held, encode = workspace_extra(plain_layout(shape, cfg, opts), cfg, dtype_bytes(opts.state_dtype))
    return max(held + ws, encode)


def group_workspace_bytes(tensors: list[tuple[tuple[int, ...], str]], cfg: MethodConfig, opts: OptimizerDefaults,
                          scratch: bool = True) -> int:
    """High-water mark of one step of a param group of (shape, parameter dtype) tensors that share ``cfg``.

    Adam steps the group with multi-tensor kernels (``adam.group_workspace_bytes``); Shampoo and Sketchy batch
    their roots or FD updates across tensors where blocks share a problem size (their ``group_workspace_bytes``,
    ``batching``); the other methods, and those otherwise, step tensor after tensor, so the group's figure is its
    largest tensor's, or the sanitising pass over the group (a float32 norm per tensor and their stack: at most
    16 bytes per tensor) when that is larger; so do
    all methods, Adam included, with compressed state (``optimizers.torch.base``: decoded one tensor at a time).
    """
    if cfg.method == "adam" and not is_compressed(cfg):
        return adam.group_workspace_bytes([(tuple(int(d) for d in s), dt) for s, dt in tensors], cfg, opts)
    batched = getattr(METHOD_MODULES[cfg.method], "group_workspace_bytes", None)
    if batched is not None and not is_compressed(cfg):  # kernels batched across the tensors (``batching``)
        ws = batched([(_dims(s), dt) for s, dt in tensors], cfg, opts, scratch)
        if ws is not None:
            return ws
    return max([16 * len(tensors)] + [workspace_of(s, cfg, opts, dt, scratch) for s, dt in tensors])


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list:
    """The kernel calls one step of ``cfg.method`` makes for a parameter of ``shape`` (``kernels.calls``): the
    method's on the plain configuration, plus decoding and encoding its compressed tensors."""
    from ..kernels.calls import pointwise
    from .compression import coded, quantisation_passes

    shape = _dims(shape)
    calls = METHOD_MODULES[cfg.method].kernel_calls(shape, plain_config(cfg), opts)
    if is_compressed(cfg):
        calls = calls + [pointwise(t.numel, quantisation_passes(c)) for t, c in coded(plain_layout(shape, cfg, opts), cfg)]
    return calls


def initial_identity(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> dict[str, float]:
    """State tensors of ``cfg.method`` that start as c·I (batched over their leading block dimension) instead
    of zero, by name → c: Shampoo's roots (I), KrADagrad's inverse statistics (I/ε) and roots. Both backends
    initialise from this."""
    fn = getattr(METHOD_MODULES[cfg.method], "initial_identity", None)
    return fn(tuple(int(d) for d in shape), cfg, opts) if fn is not None else {}


__all__ = [
    "DTYPE_BYTES", "GRAFTS", "MATRIX_METHODS", "METHODS", "METHOD_MODULES", "MOMENTA", "MethodConfig",
    "OptimizerDefaults", "SKIP_COUNTER", "StateTensor", "dtype_bytes", "initial_identity", "kernel_calls", "state_layout",
    "total_bytes", "workspace_bytes", "workspace_of", "group_workspace_bytes", "plain_layout",
]
