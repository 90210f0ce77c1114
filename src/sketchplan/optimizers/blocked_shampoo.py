"""Blocked Shampoo (Anil et al. 2020): Shampoo on square-ish blocks of at most B along every dimension.

Each dimension larger than the block size B is cut into chunks of B (ALGORITHMS.md §0.2) and every block keeps
its own statistics and roots; with square B×B blocks this costs about 4·numel floats whatever B is. The layout
and update are Shampoo's (``shampoo.py``) with ``block_size`` set; this module only names the method.
"""

from __future__ import annotations

from ..kernels.calls import KernelCall
from . import shampoo
from .base import register
from .layout import MethodConfig, OptimizerDefaults, StateTensor


def layout(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[StateTensor]:
    """Exact state tensors of blocked Shampoo with block size ``cfg.block_size``."""
    if cfg.block_size is None:
        raise ValueError("blocked_shampoo needs a block_size")
    return shampoo.layout(shape, cfg, opts)


def workspace_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    return shampoo.workspace_bytes(shape, cfg, opts)


def kernel_calls(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> list[KernelCall]:
    """Shampoo's kernel calls (``shampoo.kernel_calls``) with the blocks of ``cfg.block_size`` batched per group."""
    return shampoo.kernel_calls(shape, cfg, opts)


class BlockedShampoo(shampoo.Shampoo):
    """Blocked Shampoo (Anil et al. 2020): ``Shampoo`` with every dimension cut into chunks of ``block_size``
    (default 1024); each block keeps its own statistics and roots, blocks of one shape are processed by
    batched kernels. See ``Shampoo`` for the math and the options."""

    def __init__(self, params, lr: float = 1e-3, block_size: int = 1024, **options):
        super().__init__(params, lr=lr, block_size=block_size, **options)


register("blocked_shampoo", shampoo.ShampooRule())
