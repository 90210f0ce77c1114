"""Packed symmetric factors in torch: the rectangular full packed format of ``methods.packing`` (issue 19b).

``unpack`` and ``pack`` convert between the flat (count, d(d+1)/2) state and full (count, d, d) squares with
triangle selections and copies of quarter-size blocks (no index tensors). ``unpacked_state`` gives a step the full
squares of a tensor's packed factors and packs back the ones the step changed; every other state tensor is the
state's own object, so in-place updates reach the state.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.packing import PACKED_FACTORS, changed_names, halves, is_packed_name, rfp_shape


def _views(flat: torch.Tensor, d: int):
    """(A11 lower, A22 upper, A21) views of a packed (count, d(d+1)/2) tensor."""
    rows, n1 = rfp_shape(d)
    _, n2 = halves(d)
    rect = flat.view(flat.shape[0], rows, n1)
    top = rect[:, :n2 + 1]
    return top[:, n2 + 1 - n1:], top[:, :n2, n1 - n2:], rect[:, n2 + 1:], top


def unpack(flat: torch.Tensor, d: int) -> torch.Tensor:
    """The full symmetric (count, d, d) matrices of packed ``flat`` (count, d(d+1)/2)."""
    a11, a22, a21, _ = _views(flat, d)
    n1, _ = halves(d)
    full = flat.new_empty((flat.shape[0], d, d))
    f11, f22 = full[:, :n1, :n1], full[:, n1:, n1:]
    f11.copy_(a11.tril())
    f11.add_(a11.tril(-1).mT)
    f22.copy_(a22.triu())
    f22.add_(a22.triu(1).mT)
    full[:, n1:, :n1].copy_(a21)
    full[:, :n1, n1:].copy_(a21.mT)
    return full


def pack(full: torch.Tensor, out: torch.Tensor) -> None:
    """Write the upper/lower triangles of symmetric ``full`` (count, d, d) into packed ``out`` in place."""
    d = full.shape[-1]
    a11, a22, a21, top = _views(out, d)
    n1, _ = halves(d)
    top.zero_()
    a11.add_(full[:, :n1, :n1].tril())
    a22.add_(full[:, n1:, n1:].triu())
    a21.copy_(full[:, n1:, :n1])


@contextmanager
def unpacked_state(state: dict, cfg: MethodConfig, opts: OptimizerDefaults):
    """The state with ``cfg``'s packed factors as full squares (the state itself when nothing is packed); on exit
    the factors this step changed (``methods.packing.changed_names``) are packed back."""
    if not cfg.packed:
        yield state
        return
    names = [k for k in state if is_packed_name(cfg.method, k)]
    work = dict(state)
    for k in names:
        t = state[k]
        work[k] = unpack(t, _side(t.shape[-1]))
    yield work
    changed = changed_names(cfg.method, state["step"], opts)
    for k in names:
        if k.split(".", 1)[1].rstrip("0123456789") in changed:
            pack(work[k], state[k])
    for k in names:
        work[k] = None  # the squares go now (the caller may keep ``work`` alive)


def _side(numel: int) -> int:
    """d with d(d+1)/2 = numel."""
    d = int(((8 * numel + 1) ** 0.5 - 1) / 2)
    while d * (d + 1) // 2 < numel:
        d += 1
    return d


__all__ = ["PACKED_FACTORS", "pack", "unpack", "unpacked_state"]
