"""Blocked Shampoo in torch: ``Shampoo`` with ``block_size`` set (facts in ``methods.blocked_shampoo``)."""

from __future__ import annotations

from . import shampoo
from .base import register


class BlockedShampoo(shampoo.Shampoo):
    """Blocked Shampoo (Anil et al. 2020): ``Shampoo`` with every dimension cut into chunks of ``block_size``
    (default 1024); each block keeps its own statistics and roots, blocks of one shape are processed by
    batched kernels. See ``Shampoo`` for the math and the options."""

    def __init__(self, params, lr: float = 1e-3, block_size: int = 1024, **options):
        super().__init__(params, lr=lr, block_size=block_size, **options)


register("blocked_shampoo", shampoo.ShampooRule())
