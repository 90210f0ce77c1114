"""Where a parameter's optimizer state lives when training runs on several ranks (framework-free).

Two placements, both derived from the method's own ``layout`` so the planner's per-rank bytes and what the
distributed torch optimizer allocates cannot drift apart:

- **owner placement** (DDP, ZeRO-1, ZeRO-2; docs/algorithms.md, Spreading the work over ranks, as
  DistributedShampoo does): under DDP and ZeRO-1 every rank sees the whole averaged gradient; under ZeRO-2 only
  the tensor's owner receives it (all of a tensor's blocks are then on that owner). Each preconditioner block (one slice of a stacked ``blocks{g}.*`` tensor) is owned by
  one rank, which keeps that block's statistics, sketch and roots and computes its direction. The element-wise
  rest (Adam moments, graft, momentum, extreme-tensoring accumulators, the skip counter) is kept by every rank
  under DDP and by one owner rank per tensor under ZeRO. ``local_layout`` is the layout one rank allocates.
- **shard placement** (FSDP2, HSDP): a rank holds a dim-0 shard of every parameter (``torch.chunk`` rows, as
  ``fully_shard`` splits them) and preconditions that shard alone: its layout is the method's layout of the
  local shape (``local_shape``), so blocks never straddle a shard boundary.

Block order: the flat block index runs over the layout's block groups in order (``blocks0`` first), and within a
group over its blocks in row-major order (``methods.blocking.partition``); ``TensorEntry.owners`` lists one rank
per block in that order.
"""

from __future__ import annotations

from .layout import StateTensor


def is_block_tensor(t: StateTensor) -> bool:
    """True for a stacked per-block preconditioner tensor (``blocks{g}.<name>{i}``, first axis = block)."""
    return t.name.startswith("blocks") and bool(t.shape)


def block_group(t: StateTensor) -> int:
    """The block group index g of ``blocks{g}.<name>``."""
    return int(t.name[len("blocks"):t.name.index(".")])


def block_counts(layout: list[StateTensor]) -> list[int]:
    """Number of blocks of each block group g = 0, 1, … of a layout (empty for a method without blocks)."""
    counts: dict[int, int] = {}
    for t in layout:
        if is_block_tensor(t):
            counts[block_group(t)] = t.shape[0]
    return [counts[g] for g in sorted(counts)]


def block_bytes(layout: list[StateTensor]) -> list[int]:
    """Bytes of each block, in flat block order (all of a block's statistics, roots or sketch)."""
    per_group: dict[int, int] = {}
    counts: dict[int, int] = {}
    for t in layout:
        if is_block_tensor(t):
            g = block_group(t)
            per_group[g] = per_group.get(g, 0) + t.nbytes // t.shape[0]
            counts[g] = t.shape[0]
    return [per_group[g] for g in sorted(per_group) for _ in range(counts[g])]


def rest_bytes(layout: list[StateTensor]) -> int:
    """Bytes of the element-wise rest (everything that is not a block tensor)."""
    return sum(t.nbytes for t in layout if not is_block_tensor(t))


def owned_by_group(owners: list[int], layout: list[StateTensor], rank: int) -> list[list[int]]:
    """Indices, per block group, of the blocks ``rank`` owns (``owners``: one rank per block, flat order)."""
    counts = block_counts(layout)
    if sum(counts) != len(owners):  # checked first: a short list must not fail as an IndexError
        raise ValueError(f"{len(owners)} block owners given for {sum(counts)} blocks")
    out, start = [], 0
    for count in counts:
        out.append([j for j in range(count) if owners[start + j] == rank])
        start += count
    return out


def local_layout(layout: list[StateTensor], owned: list[list[int]], keep_rest: bool) -> list[StateTensor]:
    """What one rank allocates under the owner placement: each block tensor cut to the rank's ``owned`` blocks
    (a group it owns nothing of is dropped), the element-wise rest only when ``keep_rest``."""
    out = []
    for t in layout:
        if is_block_tensor(t):
            n = len(owned[block_group(t)])
            if n:
                out.append(StateTensor(t.name, (n,) + tuple(t.shape[1:]), t.dtype))
        elif keep_rest:
            out.append(t)
    return out


def chunk_rows(dim0: int, shards: int, index: int) -> int:
    """Rows of shard ``index`` when ``dim0`` rows are cut as ``torch.chunk(dim0, shards)`` does (as FSDP2's
    ``fully_shard`` does): ⌈dim0/shards⌉ per shard, the last non-empty one holds the rest, later ones none."""
    per = -(-dim0 // shards)
    return max(0, min(per, dim0 - index * per))


def padded_rows(dim0: int, shards: int) -> int:
    """Rows FSDP2 allocates per shard (every shard padded to ⌈dim0/shards⌉)."""
    return -(-dim0 // shards)


def local_shape(shape: tuple[int, ...], shards: int, index: int) -> tuple[int, ...]:
    """Shape of shard ``index`` of a parameter split on dim 0 over ``shards`` ranks (a scalar stays whole)."""
    if not shape or shards <= 1:
        return tuple(shape)
    return (chunk_rows(shape[0], shards, index),) + tuple(shape[1:])
