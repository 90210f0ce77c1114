"""Matrix products whose speed depends on how they are written.

On CPU, MKL's gemm computes a product with few output *columns* (A @ B, B of d × s with s ≲ 64) far below its
rate for the same product with few output *rows*: measured on the reference 1-thread AMD EPYC profile machine
(torch 2.13, MKL 2024.2), Xᵀ Q with X of 1024 × 2048 and Q of 1024 × 8 took 7.6 ms written as ``x.mT @ q`` and
0.57 ms as ``(q.mT @ x).mT`` (13×); X P with P of 2048 × 8, 1.7 ms against 0.54 ms (3×); at s = 64 the two forms
are within 1–30%, the row form never slower. ``thin_matmul`` takes the row form for such products on CPU; on
accelerators (cuBLAS takes either layout at the same speed) it is ``a @ b``.
"""

from __future__ import annotations

import torch

from ..calls import THIN_COLUMNS


def thin_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (batched), computed as ``(bᵀ aᵀ)ᵀ`` on CPU when b has at most ``THIN_COLUMNS`` columns (module
    docstring). The result may be a transposed view; its values and bytes are those of ``a @ b``."""
    if b.shape[-1] <= THIN_COLUMNS and a.device.type == "cpu":
        return (b.mT @ a.mT).mT
    return a @ b
