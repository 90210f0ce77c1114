"""Where each optimizer-state array lives on a device mesh, and how many bytes each device holds (framework-free).

A mesh is an ordered mapping axis name → size (``{"data": 4, "model": 2}``, devices in row-major order of the
axes, as ``jax.sharding.Mesh.devices.flat``); a partition spec is a tuple with one entry per dimension: None
(not split), an axis name, or a tuple of axis names (split over their product, first name major), as
``jax.sharding.PartitionSpec``. The rule, shared by the optax transformations (which place the arrays) and the
per-device prediction (which counts them):

- **elementwise state** (the roles of ``ELEMENTWISE``: Adam's moments, a graft's second moment, any method's
  momentum, Adafactor's unfactored variance; bfloat16 or uint8 codes when compressed), whose shape is the
  parameter's, is split exactly like its parameter;
- **every other array** (statistics, roots, sketches, SOAP's eigenbases and rotated second moments, factored
  grafts and Adafactor's row/column variances, extreme-tensoring accumulators, int8 block maxima, packed
  triangles (blocks, d(d+1)/2); the
  block methods' arrays are stacked per block group as (blocks, …)) is split over ALL mesh devices along its
  first dimension when that is a positive multiple of the device count — for stacked blocks the block axis, so
  each device holds, updates and applies whole blocks (Anil et al. 2020's distribution of blocked Shampoo);
  otherwise it is replicated (a scalar counter, a tensor with fewer blocks than devices: an unblocked tensor's
  statistics are one block).

A matrix's rows are never split: with the roots of a (1, d, d) group constrained to a row-split layout, XLA
(jax 0.10.2, CPU) returned zero rows in the direction of a tensor with two block groups (reproduced by
benchmarks/jax_row_split_repro.py; block-axis splits give the unsharded result). To spread an unblocked
tensor's preconditioner, give it a block size (blocked Shampoo, or ``block_size`` for Sketchy/KrADagrad).

So elementwise state is never replicated beyond its parameter, and a preconditioner is replicated only when
its block count is not a multiple of the device count; ``tensor_device_bytes`` says, per device, what that costs.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

from .layout import StateTensor, dtype_bytes

#: Elementwise roles: state-tree field → the layout names that fill it (at most one per tensor).
ELEMENTWISE: dict[str, tuple[str, ...]] = {"mu": ("exp_avg", "momentum"),
                                          "nu": ("exp_avg_sq", "graft_exp_avg_sq", "variance")}

SpecEntry = Union[None, str, tuple[str, ...]]
Spec = tuple[SpecEntry, ...]


def elementwise_role(t: StateTensor, param_shape: tuple[int, ...]) -> Optional[str]:
    """The ``ELEMENTWISE`` field a layout tensor fills, or None when it is not shaped like its parameter."""
    if tuple(t.shape) != tuple(param_shape):
        return None
    for role, names in ELEMENTWISE.items():
        if t.name in names:
            return role
    return None


def _axes(entry: SpecEntry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def factor_spec(shape: Sequence[int], mesh: Mapping[str, int]) -> Spec:
    """The spec of a non-elementwise array: its first dimension split over all mesh axes (in mesh order) when it
    is a positive multiple of the device count; () — replicated — otherwise or on a one-device mesh."""
    n = math.prod(mesh.values())
    if n > 1 and len(shape) and shape[0] >= n and shape[0] % n == 0:
        return (tuple(mesh),)
    return ()


def shard_elements(shape: Sequence[int], spec: Spec, mesh: Mapping[str, int]) -> list[int]:
    """Elements of an array of ``shape`` split by ``spec`` held by each device (row-major device order).

    A dimension of size d split k ways gives shard j the block [j·c, min(d, (j+1)·c)) with c = ⌈d/k⌉ (JAX's
    uneven sharding; padding is not counted: ``addressable_shards`` reports the unpadded shards)."""
    names = list(mesh)
    sizes = [mesh[a] for a in names]
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    out = []
    for flat in range(math.prod(sizes)):
        coord, rest = {}, flat
        for a, s in zip(reversed(names), reversed(sizes)):
            coord[a], rest = rest % s, rest // s
        n = 1
        for d, entry in zip(shape, spec):
            ways, index = 1, 0
            for a in _axes(entry):
                ways, index = ways * mesh[a], index * mesh[a] + coord[a]
            c = -(-d // ways)
            n *= max(0, min(d, (index + 1) * c) - index * c)
        out.append(n)
    return out


def tensor_device_bytes(layout: Sequence[StateTensor], param_shape: tuple[int, ...], param_spec: Spec,
                        mesh: Mapping[str, int]) -> list[int]:
    """Bytes of one tensor's optimizer state on each device under the module's rule."""
    total = [0] * math.prod(mesh.values())
    for t in layout:
        spec = param_spec if elementwise_role(t, param_shape) else factor_spec(t.shape, mesh)
        for i, n in enumerate(shard_elements(t.shape, spec, mesh)):
            total[i] += n * dtype_bytes(t.dtype)
    return total
