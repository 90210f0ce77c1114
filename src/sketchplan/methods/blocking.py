"""Merging and blocking of parameter shapes (ALGORITHMS.md §0), shared by every matrix method.

The optimizer and the planner both call these functions, so both see the same blocks.

1. ``merged_shape``: drop size-1 dimensions, then merge adjacent dimensions from the right while their product
   stays ≤ ``merge_dims``: (64,3,3,3) → (64,27); (512,256,3,3) → (512,256,9); (16,10) → (160,).
2. ``partition``: cut every dimension larger than the block size B into chunks of B (the last chunk holds the
   remainder). Blocks of equal shape are grouped so that their statistics can be stacked and processed by
   batched kernels; the group order is the order of first appearance in row-major block order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import product


def merged_shape(shape: tuple[int, ...], merge_dims: int) -> tuple[int, ...]:
    """Shape after dropping size-1 dims and merging adjacent dims (right to left) while product ≤ merge_dims."""
    dims = [int(d) for d in shape if d != 1]
    if not dims:
        return ()
    out: list[int] = []
    cur = dims[-1]
    for d in reversed(dims[:-1]):
        if cur * d <= merge_dims:
            cur *= d
        else:
            out.append(cur)
            cur = d
    out.append(cur)
    return tuple(reversed(out))


def chunks(dim: int, block_size: int | None) -> list[int]:
    """Sizes of the chunks one dimension is cut into (a single chunk when block_size is None or ≥ dim)."""
    if block_size is None or dim <= block_size:
        return [dim]
    full, rest = divmod(dim, block_size)
    return [block_size] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class BlockGroup:
    """All blocks of one shape inside a (merged) tensor: their shape and where each block sits."""

    shape: tuple[int, ...]
    slices: tuple[tuple[slice, ...], ...]

    @property
    def count(self) -> int:
        return len(self.slices)


def partition(shape: tuple[int, ...], block_size: int | None) -> list[BlockGroup]:
    """Blocks of ``shape`` (already merged) grouped by block shape, in order of first appearance."""
    per_dim = []
    for d in shape:
        sizes = chunks(d, block_size)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        per_dim.append([(s, n) for s, n in zip(starts, sizes)])
    groups: dict[tuple[int, ...], list[tuple[slice, ...]]] = {}
    for combo in product(*per_dim):
        bshape = tuple(n for _, n in combo)
        groups.setdefault(bshape, []).append(tuple(slice(s, s + n) for s, n in combo))
    return [BlockGroup(bshape, tuple(sl)) for bshape, sl in groups.items()]


def group_counts(shape: tuple[int, ...], block_size: int | None) -> list[tuple[tuple[int, ...], int]]:
    """(block shape, number of blocks) per group, without materialising slices (fast path for the planner)."""
    per_dim = []
    for d in shape:
        counts: dict[int, int] = {}
        for n in chunks(d, block_size):
            counts[n] = counts.get(n, 0) + 1
        per_dim.append(list(counts.items()))
    out: list[tuple[tuple[int, ...], int]] = []
    for combo in product(*per_dim):
        out.append((tuple(n for n, _ in combo), math.prod(c for _, c in combo)))
    return out


@dataclass(frozen=True)
class MatrixPlan:
    """How a matrix method sees one parameter: merged shape and block groups, or a diagonal fallback.

    ``fallback`` names why the tensor is not preconditioned (``"scalar"``, ``"dim>max_precond_dim"``) and is
    ``None`` when it is; then the tensor's direction is its graft's.
    """

    merged: tuple[int, ...]
    block_size: int | None
    groups: tuple[tuple[tuple[int, ...], int], ...]
    fallback: str | None

    @property
    def order(self) -> int:
        return len(self.merged)


def matrix_plan(shape: tuple[int, ...], block_size: int | None, merge_dims: int, max_precond_dim: int) -> MatrixPlan:
    """Apply ALGORITHMS.md §0 to one parameter shape for a matrix method with optional block size."""
    merged = merged_shape(shape, merge_dims)
    if not merged:
        return MatrixPlan(merged, block_size, (), "scalar")
    groups = tuple(group_counts(merged, block_size))
    if max(max(g) for g, _ in groups) > max_precond_dim:
        return MatrixPlan(merged, block_size, (), "dim>max_precond_dim")
    return MatrixPlan(merged, block_size, groups, None)


@lru_cache(maxsize=4096)
def cached_plan(shape: tuple[int, ...], block_size: int | None, merge_dims: int, max_precond_dim: int) -> MatrixPlan:
    """``matrix_plan``, memoised: the optimizers ask it for every tensor at every step."""
    return matrix_plan(shape, block_size, merge_dims, max_precond_dim)


@lru_cache(maxsize=4096)
def cached_partition(merged: tuple[int, ...], block_size: int | None) -> tuple[BlockGroup, ...]:
    """``partition``, memoised (the slices of every block, reused by the optimizers at every step)."""
    return tuple(partition(merged, block_size))
