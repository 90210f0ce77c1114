"""Allocating optimizer state from a layout (``methods.layout.StateTensor`` lists are the one source of truth)."""

from __future__ import annotations

import torch

from ...methods.layout import StateTensor


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a layout dtype name such as ``"float32"``."""
    return getattr(torch, name)


def allocate(layout: list[StateTensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Zero tensors with exactly the names, shapes and dtypes of ``layout``."""
    return {t.name: torch.zeros(t.shape, dtype=torch_dtype(t.dtype), device=device) for t in layout}


def set_identities(state: dict[str, torch.Tensor], values: dict[str, float]) -> None:
    """Set each named (count, d, d) state tensor to c·I per block (``methods.initial_identity``); names this
    process does not keep (a distributed rank's other blocks) are skipped."""
    for name, c in values.items():
        t = state.get(name)
        if t is None:
            continue
        if t.dim() == 2:  # a packed triangle (count, d(d+1)/2): methods.packing
            from .packing import _side, pack

            d = _side(t.shape[-1])
            pack(torch.eye(d, dtype=t.dtype, device=t.device).mul_(c).expand(t.shape[0], d, d), t)
            continue
        t.copy_(torch.eye(t.shape[-1], dtype=t.dtype, device=t.device).mul_(c).expand_as(t))
