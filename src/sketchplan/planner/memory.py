"""The memory model of one training step: parameters, gradients, master weights, optimizer state, workspace.

- parameters: every tensor once (tied weights once), frozen ones included, in its dtype (or ``param_dtype``);
- gradients: trainable tensors, in ``grad_dtype`` or the parameter's dtype;
- master weights: a float32 copy of every trainable 16-bit (bfloat16/float16) tensor when ``master_weights``
  (mixed precision; the torch optimizer allocates exactly these, ``optimizers.torch.base``);
- optimizer state: the sum of the chosen layouts' bytes; with ``world_size`` N and ``shard_optimizer_state``
  (ZeRO-1) the state is split across ranks by whole preconditioner blocks (element-wise state evenly) with
  longest-processing-time assignment, and the largest rank's share is what must fit;
- workspace: the largest transient of the step (tensors are stepped one after another, so the peak is the
  largest single tensor's, not the sum).
peak = parameters + buffers + master weights + state (largest rank)
       + max(gradients + optimizer-step workspace, forward+backward high-water mark above parameters and buffers)
(the backward's figure includes the gradients it creates; the optimizer step also holds the batch and the
outputs still referenced, ``ActivationInfo.retained_bytes``; without a trace both are 0 and activations are left
to the reserve). ``step_peak`` computes it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from ..methods.layout import StateTensor, dtype_bytes
from .analysis import ModelSpec, ParamSpec


#: Parameter dtypes that get an fp32 master copy under ``master_weights``.
MASTER_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class Precision:
    param_dtype: str | None = None
    grad_dtype: str | None = None
    master_weights: bool = False

    def param_bytes(self, p: ParamSpec) -> int:
        return p.numel * dtype_bytes(self.param_dtype or p.dtype)

    def grad_bytes(self, p: ParamSpec) -> int:
        return p.numel * dtype_bytes(self.grad_dtype or self.param_dtype or p.dtype) if p.trainable else 0

    def master_bytes(self, p: ParamSpec) -> int:
        """A float32 copy of a trainable tensor whose dtype is 16-bit (a float32/float64 one needs none)."""
        wanted = self.master_weights and p.trainable and self.param_dtype_of(p) in MASTER_DTYPES
        return p.numel * 4 if wanted else 0

    def param_dtype_of(self, p: ParamSpec) -> str:
        return self.param_dtype or p.dtype


@dataclass(frozen=True)
class FixedBytes:
    params: int
    grads: int
    master: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.master


def fixed_bytes(spec: ModelSpec, prec: Precision) -> FixedBytes:
    """Bytes that do not depend on the optimizer choice."""
    return FixedBytes(
        params=sum(prec.param_bytes(p) for p in spec.params),
        grads=sum(prec.grad_bytes(p) for p in spec.params),
        master=sum(prec.master_bytes(p) for p in spec.params),
    )


def shard_units(layout: list[StateTensor], world_size: int) -> list[tuple[int, int]]:
    """Pieces of one tensor's state for ZeRO-1 assignment, as (bytes, count) pairs.

    A preconditioner block (a slice of a stacked ``blocks*`` tensor) is indivisible: its statistics, root or
    sketch must sit on one rank. Element-wise state (Adam moments, grafts, momentum, counters) is split evenly
    over the ranks, as ZeRO-1 does with its flat buffers.
    """
    units: list[tuple[int, int]] = []
    flat = 0
    for t in layout:
        if t.name.startswith("blocks") and t.shape:
            if t.shape[0]:
                units.append((t.nbytes // t.shape[0], t.shape[0]))
        else:
            flat += t.nbytes
    if flat:
        units.append((-(-flat // world_size), world_size))
    return units


def largest_rank(units: list[tuple[int, int]], world_size: int) -> int:
    """Largest per-rank total when the ``(bytes, count)`` units are assigned longest-first to the least-loaded
    rank (LPT). Equal units are placed a level at a time: ranks with equal loads are interchangeable, so the
    loads are kept as {load: number of ranks} and a batch of equal units fills the lowest level in whole rounds.
    Exact (the same loads as one-by-one LPT) in time that grows with the distinct sizes, not with the count of
    blocks or ranks."""
    if world_size <= 1:
        return sum(size * count for size, count in units)
    merged: dict[int, int] = {}
    for size, count in units:
        if size > 0 and count > 0:
            merged[size] = merged.get(size, 0) + count
    levels: dict[int, int] = {0: world_size}  # load → ranks at that load
    heap = [0]

    def add(load: int, ranks: int) -> None:
        if ranks <= 0:
            return
        if load not in levels:
            levels[load] = 0
            heapq.heappush(heap, load)
        levels[load] += ranks

    for u in sorted(merged, reverse=True):
        c = merged[u]
        while c:
            low = heapq.heappop(heap)
            n = levels.pop(low)
            nxt = heap[0] if heap else None
            k = None if nxt is None else -(-(nxt - low) // u)  # whole rounds the level stays the minimum
            if k is not None and c >= k * n:
                c -= k * n
                add(low + k * u, n)
            else:
                r, rem = divmod(c, n)
                c = 0
                add(low + r * u, n - rem)
                add(low + (r + 1) * u, rem)
    return max(levels)


def step_peak(fixed: FixedBytes, state: int, workspace: int, buffers: int = 0, activations: int | None = None,
              retained: int = 0) -> int:
    """The training step's high-water mark (module docstring): the optimizer step (gradients and its transients
    on top of everything kept, with the batch and the outputs the backward leaves alive, ``retained``) or the
    forward+backward (activations and the gradients as they appear). Everything in ``fixed`` but the gradients
    (parameters, master weights and, per rank, the engine's communication buffers) is held throughout."""
    return fixed.total - fixed.grads + buffers + state + max(fixed.grads + workspace + retained, activations or 0)
