"""Blocked Shampoo (Anil et al. 2020): Shampoo on square-ish blocks of at most B along every dimension.

Each dimension larger than the block size B is cut into chunks of B (docs/algorithms.md, Shapes) and every block keeps
its own statistics and roots; with square B×B blocks this costs about 4·numel floats whatever B is. The layout
and update are Shampoo's (``methods.shampoo``) with ``block_size`` set; this module only names the method.
"""

from __future__ import annotations

from ..kernels.calls import KernelCall
from . import shampoo
from .layout import MethodConfig, OptimizerDefaults, StateTensor

NAME = "blocked_shampoo"
MATRIX = True
SCORE_FACTOR = shampoo.SCORE_FACTOR
kept_rank = shampoo.kept_rank


initial_identity = shampoo.initial_identity
batches = shampoo.batches
plan_for = shampoo.plan_for
group_workspace_bytes = shampoo.group_workspace_bytes


def grid(ranks: tuple[int, ...], block_sizes: tuple[int, ...]) -> list[dict]:
    """The per-tensor options the planner tries (besides graft and momentum): every block size, with square or
    packed factors (``methods.packing``)."""
    return [{"block_size": b, **pk} for b in block_sizes for pk in ({}, {"packed": True})]


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors of blocked Shampoo with block size ``cfg.block_size``."""
    if cfg.block_size is None:
        raise ValueError("blocked_shampoo needs a block_size")
    return shampoo.layout(shape, cfg, opts)


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults,
                    param_dtype: str = "float32", scratch: bool = True) -> int:
    """Shampoo's step transients (``shampoo.workspace_bytes``) with the blocks stacked per group."""
    return shampoo.workspace_bytes(shape, cfg, opts, param_dtype, scratch)


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """Shampoo's kernel calls (``shampoo.kernel_calls``) with the blocks of ``cfg.block_size`` batched per group."""
    return shampoo.kernel_calls(shape, cfg, opts)
