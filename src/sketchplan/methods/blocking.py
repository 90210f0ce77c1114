"""Merging and blocking of parameter shapes (docs/algorithms.md, Shapes), shared by every matrix method.

The optimizer and the planner both call these functions, so both see the same blocks.

1. ``merged_shape``: drop size-1 dimensions, then merge adjacent dimensions from the right while their product
   stays ≤ ``merge_dims``: (64,3,3,3) → (64,27); (512,256,3,3) → (512,256,9); (16,10) → (160,).
2. ``partition``: cut every dimension larger than the block size B into chunks of B (the last chunk holds the
   remainder). Blocks of equal shape are grouped so that their statistics can be stacked and processed by
   batched kernels; the group order is the order of first appearance in row-major block order.
3. Structure (``MethodConfig.batch_dims``, ``splits``): a tensor whose leading ``batch_dims`` axes index
   independent matrices (stacked experts, E × m × n) is a batch: those axes are never merged, never get a factor,
   and every expert's matrix is blocked on its own (a block is indexed by an integer on the expert axis, so its
   shape has no expert axis). ``splits`` are the sizes of fused segments (gate|up, q|k|v) along the matrix axis
   ``split_axis``: each segment is chunked on its own, so no block straddles a boundary, even unblocked.
   The axes of a tensor with splits are not merged (the segments stay matrices).
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


def axis_chunks(d: int, block_size: int | None, segments: tuple[int, ...] | None = None) -> list[int]:
    """Chunk sizes of one axis: each fused segment (all of ``d`` when none) cut into blocks of ≤ block_size."""
    out: list[int] = []
    for seg in (segments or (d,)):
        out += chunks(seg, block_size)
    return out


def partition(shape: tuple[int, ...], block_size: int | None, batched: bool = False,
              splits: tuple[tuple[int, ...] | None, ...] | None = None) -> list[BlockGroup]:
    """Blocks of ``shape`` (already merged) grouped by block shape, in order of first appearance.

    ``batched``: axis 0 indexes independent matrices (one integer index per block, not part of its shape).
    ``splits``: per matrix axis (after the batch axis), fused segment sizes or None.
    """
    per_dim: list[list[tuple]] = []
    if batched:
        per_dim.append([(i, None) for i in range(shape[0])])
    mat = shape[1:] if batched else shape
    for a, d in enumerate(mat):
        sizes = axis_chunks(d, block_size, splits[a] if splits else None)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        per_dim.append([(s, n) for s, n in zip(starts, sizes)])
    groups: dict[tuple[int, ...], list[tuple]] = {}
    for combo in product(*per_dim):
        bshape = tuple(n for _, n in combo if n is not None)
        groups.setdefault(bshape, []).append(tuple(s if n is None else slice(s, s + n) for s, n in combo))
    return [BlockGroup(bshape, tuple(sl)) for bshape, sl in groups.items()]


def group_counts(shape: tuple[int, ...], block_size: int | None, batched: bool = False,
                 splits: tuple[tuple[int, ...] | None, ...] | None = None) -> list[tuple[tuple[int, ...], int]]:
    """(block shape, number of blocks) per group, without materialising slices (fast path for the planner);
    the same groups, in the same order, as ``partition``."""
    mat = shape[1:] if batched else shape
    per_dim = []
    for a, d in enumerate(mat):
        counts: dict[int, int] = {}
        for n in axis_chunks(d, block_size, splits[a] if splits else None):
            counts[n] = counts.get(n, 0) + 1
        per_dim.append(list(counts.items()))
    reps = shape[0] if batched else 1
    out: list[tuple[tuple[int, ...], int]] = []
    for combo in product(*per_dim):
        out.append((tuple(n for n, _ in combo), reps * math.prod(c for _, c in combo)))
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
    batched: bool = False  # merged axis 0 indexes independent matrices (stacked experts)
    splits: tuple[tuple[int, ...] | None, ...] | None = None  # per matrix axis: fused segment sizes

    @property
    def order(self) -> int:
        """Order of each block (the expert axis of a batch is not one of its axes)."""
        return len(self.merged) - (1 if self.batched else 0)

    @property
    def matrix_dims(self) -> tuple[int, ...]:
        return self.merged[1:] if self.batched else self.merged


def matrix_plan(shape: tuple[int, ...], block_size: int | None, merge_dims: int, max_precond_dim: int,
                batch_dims: int = 0, splits: tuple[int, ...] | None = None, split_axis: int = 0) -> MatrixPlan:
    """Apply the shape rules (docs/algorithms.md, Shapes) to one parameter shape for a matrix method with optional block size (and the
    structure of rule 3 in the module docstring)."""
    batch = math.prod(shape[:batch_dims]) if batch_dims else 1
    whole = tuple(d for d in shape[batch_dims:] if d != 1)
    if splits and split_axis < len(shape) - batch_dims and sum(splits) == shape[batch_dims + split_axis] \
            and len(splits) > 1 and shape[batch_dims + split_axis] != 1:
        rest = whole  # fused segments are kept apart: their axes are not merged with others
    else:
        rest = merged_shape(tuple(shape[batch_dims:]), merge_dims) if batch_dims else merged_shape(shape, merge_dims)
    batched = batch_dims > 0 and batch > 1 and bool(rest)
    merged = ((batch,) + rest) if batched else rest
    if not merged:
        return MatrixPlan(merged, block_size, (), "scalar")
    axis_splits = None
    if splits and whole == rest and split_axis < len(shape) - batch_dims \
            and sum(splits) == shape[batch_dims + split_axis] and len(splits) > 1:
        axis = sum(1 for d in shape[batch_dims:batch_dims + split_axis] if d != 1)  # size-1 axes are dropped
        axis_splits = tuple(tuple(splits) if a == axis else None for a in range(len(rest)))
    groups = tuple(group_counts(merged, block_size, batched, axis_splits))
    if max(max(g) for g, _ in groups) > max_precond_dim:
        return MatrixPlan(merged, block_size, (), "dim>max_precond_dim", batched, axis_splits)
    return MatrixPlan(merged, block_size, groups, None, batched, axis_splits)


def config_plan(shape: tuple[int, ...], cfg, opts) -> MatrixPlan:
    """``matrix_plan`` of a ``MethodConfig`` (block size and structure) under ``OptimizerDefaults``, memoised."""
    return cached_plan(tuple(shape), cfg.block_size, opts.merge_dims, opts.max_precond_dim, cfg.batch_dims,
                       cfg.splits, cfg.split_axis)


@lru_cache(maxsize=4096)
def cached_plan(shape: tuple[int, ...], block_size: int | None, merge_dims: int, max_precond_dim: int,
                batch_dims: int = 0, splits: tuple[int, ...] | None = None, split_axis: int = 0) -> MatrixPlan:
    """``matrix_plan``, memoised: the optimizers ask it for every tensor at every step."""
    return matrix_plan(shape, block_size, merge_dims, max_precond_dim, batch_dims, splits, split_axis)


@lru_cache(maxsize=4096)
def cached_partition(merged: tuple[int, ...], block_size: int | None, batched: bool = False,
                     splits: tuple[tuple[int, ...] | None, ...] | None = None) -> tuple[BlockGroup, ...]:
    """``partition``, memoised (the slices of every block, reused by the optimizers at every step)."""
    return tuple(partition(merged, block_size, batched, splits))


def plan_partition(mp: MatrixPlan) -> tuple[BlockGroup, ...]:
    """The blocks of a ``MatrixPlan`` (memoised)."""
    return cached_partition(mp.merged, mp.block_size, mp.batched, mp.splits)
