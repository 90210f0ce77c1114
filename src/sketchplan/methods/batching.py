"""Batched kernels across the tensors of a param group (framework-free): which blocks share one kernel call.

Within a tensor, blocks of one shape are already stacked (``blocking``). Across tensors, the blocks of different
parameters whose factor problems have the same size are independent problems of the same shape, so one batched
call can solve them all, as DistributedShampoo and DASH batch their blocks: fewer launches (what dominates small
blocks on an accelerator) and fewer Python round trips. A *batch* here is one such call:

- ``fd_batches``: Sketchy's Frequent-Directions updates, keyed by (d, k, m): the sketched axis's size d, the
  sketch rank k = min(rank, d) and the columns m = block numel / d each block contributes;
- ``root_batches``: Shampoo's inverse roots (S + εI)^(−1/(2·order)), keyed by (d, order).

Each batch lists its members — (tensor index, block group, axis, block count) in parameter order — and stacks
their problems in that order. A member is never split. The default (``batch_blocks="auto"``) keeps the step's
memory where stepping tensor by tensor puts it: members join a call while its replayed transients — the stacked
inputs and the kernel's workspace — stay within the largest one-tensor step of the group (``within``,
``budget_bytes``); the passes around the calls are parts of the one-tensor steps, so the group's high-water mark
never rises. It also keeps a call's stacked inputs within ``BATCH_INPUT_BYTES``, where CPU caches still hold them.
``batch_blocks="all"`` makes one call per problem size (accelerators, where launches cost more than cache misses).

Used by ``optimizers.torch.matrix.MatrixRule.step`` (which runs the batches) and by the methods'
``group_workspace_bytes`` (which replays them), so both see the same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Hashable

from .blocking import MatrixPlan


@dataclass(frozen=True)
class Member:
    """The blocks of one block group of one tensor that a batch solves along ``axis``."""

    tensor: int
    group: int
    axis: int
    count: int


@dataclass(frozen=True)
class Batch:
    """One batched kernel call: its problem size ``key`` and its members, stacked in order."""

    key: tuple
    members: tuple[Member, ...]

    @property
    def count(self) -> int:
        return sum(m.count for m in self.members)

    def offsets(self) -> list[int]:
        """Where each member's blocks start in the stacked batch."""
        out, at = [], 0
        for m in self.members:
            out.append(at)
            at += m.count
        return out


#: ``fits(key, members)``: whether one call may solve problem ``key`` for the blocks of ``members`` (``None``: any
#: number).
Fits = Callable[[tuple, tuple[Member, ...]], bool] | None


def _batches(plans: list[MatrixPlan | None], key: Callable[[tuple[int, ...], int, int], Hashable],
             fits: Fits) -> list[Batch]:
    members: dict[Hashable, list[Member]] = {}
    for t, mp in enumerate(plans):
        if mp is None or mp.fallback is not None:
            continue
        for g, (bshape, count) in enumerate(mp.groups):
            for i, d in enumerate(bshape):
                members.setdefault(key(bshape, i, d), []).append(Member(t, g, i, count))
    out = []
    for k, ms in members.items():
        chunk: list[Member] = []
        for m in ms:
            if chunk and fits is not None and not fits(k, (*chunk, m)):
                out.append(Batch(k, tuple(chunk)))
                chunk = []
            chunk.append(m)
        out.append(Batch(k, tuple(chunk)))
    return out


def fd_batches(plans: list[MatrixPlan | None], rank: int, fits: Fits = None) -> list[Batch]:
    """The FD-update batches of Sketchy tensors with these plans (``None``: a tensor not updated this step)."""
    return _batches(plans, lambda bshape, i, d: (d, min(rank, d), math.prod(bshape) // d), fits)


def root_batches(plans: list[MatrixPlan | None], fits: Fits = None) -> list[Batch]:
    """The inverse-root batches of Shampoo tensors with these plans (``None``: no refresh this step)."""
    return _batches(plans, lambda bshape, i, d: (d, len(bshape)), fits)


#: ``auto``'s bound on the stacked inputs of one call (bytes). Past the CPU's last-level cache, batched products
#: slow down per problem: on the test machine (AMD EPYC, 32 MiB L3, 2 threads) ``torch.bmm`` of (256 × 32) @
#: (32 × 256) took 20-21 µs per problem up to 8 MiB of stacked 256 × 256 outputs, 26 µs at 16-25 MiB and 80 µs
#: at 37.5 MiB; Sketchy k = 32 with every 256-block of two GPT-2 blocks in one call stepped 1.25× slower than
#: tensor by tensor (``benchmarks/results/batched_blocks.md``).
BATCH_INPUT_BYTES = 8 << 20


def within(budget: int, replay: Callable[[tuple, tuple[Member, ...]], int],
           inputs: Callable[[tuple, int], int]) -> Fits:
    """``auto``'s rule: a call fits when its replayed transients (``replay(key, members)``, bytes) stay within
    ``budget``, the largest one-tensor step of the group (``budget_bytes``), and its stacked inputs
    (``inputs(key, count)``, bytes) within ``BATCH_INPUT_BYTES``."""
    return lambda key, members: (replay(key, members) <= budget
                                 and inputs(key, sum(m.count for m in members)) <= BATCH_INPUT_BYTES)


def budget_bytes(tensors: list[tuple[tuple[int, ...], str]], workspace: Callable[..., int]) -> int:
    """The high-water mark of the group stepped tensor by tensor (tensor-level, without kernel scratch): the
    largest tensor's ``workspace(shape, param_dtype)``. ``auto`` batches only within it, so batching never raises
    the peak."""
    return max(workspace(s, dt) for s, dt in tensors)


def may_batch(n_tensors: int, cfg, opts) -> bool:
    """Whether a group of ``n_tensors`` with this config batches across tensors at all: two or more tensors,
    ``batch_blocks`` not ``none``, unpacked factors (packed ones are unpacked tensor by tensor)."""
    return n_tensors >= 2 and opts.batch_blocks != "none" and not cfg.packed


def shares_calls(batches: list[Batch]) -> bool:
    """Whether batching saves any call: some batch has more than one member."""
    return any(len(b.members) > 1 for b in batches)


@lru_cache(maxsize=4096)
def group_batches(module, shapes: tuple[tuple[int, ...], ...], dtypes: tuple[str, ...], due: tuple[bool, ...], cfg,
                  opts) -> tuple[Batch, ...]:
    """The batched calls of a param group of tensors with these shapes and parameter dtypes, over the tensors
    ``due`` for the batched work this step: the method ``module``'s ``batches`` (remembered: a training loop asks
    the same question every step)."""
    plans = [module.plan_for(s, cfg, opts) if d else None for s, d in zip(shapes, due)]
    return tuple(module.batches(plans, cfg, opts, list(zip(shapes, dtypes))))
