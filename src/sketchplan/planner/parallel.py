"""Per-rank memory of one training step under data parallelism: DDP, ZeRO-1, ZeRO-2, FSDP2 and HSDP.

Per rank, with N = ``world_size`` ranks and S the shard group (S = N under FSDP, ``shard_group`` under HSDP):

==========  ======================  ======================  ==================  ===================================
parallel.   parameters              gradients               master (fp32)       optimizer state
==========  ======================  ======================  ==================  ===================================
ddp         whole                   whole                   whole               blocks by owner, element-wise whole
zero1       whole                   whole                   owned tensors'      blocks by owner, element-wise by owner
zero2       whole                   owned tensors'          owned tensors'      each tensor's whole state on its owner
fsdp, hsdp  dim-0 shard, padded     dim-0 shard, padded     shard, padded       the method's layout of the local shard
==========  ======================  ======================  ==================  ===================================

"Blocks by owner": every preconditioner block sits on one rank (``methods.placement``), assigned by
``assign_owners`` to balance the predicted compute (eigh / FD time from the hardware profile, a flop count
without one) and the bytes together; under ZeRO each tensor's element-wise state also has one owner rank, which
also keeps the tensor's fp32 master copy (``master_weights``, 16-bit parameters only: ``Precision.master_bytes``).

ZeRO-2 is tensor-granular: every tensor has one owner rank, which keeps all of its blocks, its element-wise state,
its master copy and its averaged gradient (``optimizers.torch.distributed``: a post-accumulate-grad hook
``dist.reduce``s each gradient to its owner as soon as backward has accumulated it, and frees it on every other
rank). ``assign_owners`` balances, per tensor, its state + gradient + master bytes and its predicted seconds. A
rank's gradients are exactly the gradients of the tensors it owns (``RankState.grads_by_rank``); while a gradient
of a tensor it does not own is being reduced, that one gradient is alive too: the largest such gradient is this
rank's in-flight transient, counted with the communication buffers. Such a tensor needs no direction exchange (its
owner computes and applies its direction); the owners then broadcast the updated parameters, as under ZeRO-1.

FSDP2 shards dim 0 with ``torch.chunk`` semantics and pads every shard to ⌈d0/S⌉ rows; a rank holds the
padded storage of parameters and gradients, and its optimizer state is its local (unpadded) shard's layout.

Communication buffers the engine allocates, counted in the peak:

- DDP (and ZeRO-1, whose runtime is DDP): gradient buckets, one flat copy of every gradient
  (``DistributedDataParallel``'s default ``gradient_as_bucket_view=False``);
- ZeRO-2: no bucket (the model is not wrapped in ``DistributedDataParallel``): the in-flight gradient, the
  largest gradient of a tensor the rank does not own (see above);
- FSDP2 / HSDP: the all-gather output of the largest unit (its unsharded, padded parameters) twice (the unit
  being computed and the prefetched next one) plus the reduce-scatter input of the largest unit (its unsharded
  gradients). A unit is what ``fully_shard`` wraps: a module path up to its first integer component
  (``model.layers.7``), the rest forms the root unit;
- the owner placement's direction exchange: ``all_gather`` of every rank's preconditioned blocks,
  N · (largest rank's block elements) in float32, plus this rank's send buffer; under ZeRO the owners then
  broadcast their updated parameters, one owner's packed tensors at a time (not alive with the directions). A
  tensor whose blocks all sit on its element-wise owner (every tensor under ZeRO-2) exchanges no directions.

Each per-rank term is the largest rank's; the peak adds them, an upper bound when different ranks are the largest
in different terms (the owner assignment balances their sum).

The single-device case is ``Parallel()`` (world size 1): everything whole, no buffers, as before.
"""

from __future__ import annotations

import dataclasses

import math
import re
from functools import lru_cache
from dataclasses import dataclass, field

from ..errors import UserError
from ..methods import state_layout, workspace_bytes
from ..methods.layout import MethodConfig, OptimizerDefaults, dtype_bytes
from ..methods.placement import block_bytes, local_shape, padded_rows, rest_bytes  # noqa: F401 (re-exported)
from .analysis import ModelSpec, ParamSpec
from .memory import Precision

PARALLELISMS = ("none", "ddp", "zero1", "zero2", "fsdp", "hsdp")
OWNER_KINDS = ("ddp", "zero1", "zero2")
SHARD_KINDS = ("fsdp", "hsdp")
#: DistributedDataParallel's and DeepSpeed-style reduce bucket size.
BUCKET_BYTES = 25 * 2**20


@dataclass(frozen=True)
class Parallel:
    """How the model is trained across ranks: ``kind`` (one of ``PARALLELISMS``), ``world`` ranks and, for HSDP,
    the ``shard_group`` size a parameter is sharded over (it must divide ``world``). ``mesh``: a JAX device mesh
    (axis, size) pairs instead of ranks — one process, state placed per device by ``planner.mesh``."""

    kind: str = "none"
    world: int = 1
    shard_group: int | None = None
    mesh: tuple[tuple[str, int], ...] | None = None

    @property
    def mesh_sizes(self) -> dict[str, int] | None:
        return None if self.mesh is None else dict(self.mesh)

    @property
    def owner(self) -> bool:
        return self.kind in OWNER_KINDS and self.world > 1

    @property
    def sharded(self) -> bool:
        return self.kind in SHARD_KINDS and self.shards > 1

    @property
    def shards(self) -> int:
        """Ranks a parameter is sharded over (1 unless FSDP/HSDP)."""
        if self.kind == "fsdp":
            return self.world
        if self.kind == "hsdp":
            return self.shard_group or self.world
        return 1

    @property
    def ranks(self) -> int:
        """Distinct per-rank layouts: the shard group under FSDP/HSDP (replicas repeat it), else the world."""
        return self.shards if self.kind in SHARD_KINDS else self.world


def parallel(kind: str | None, world_size: int, shard_group: int | None = None,
             shard_optimizer_state: bool = False, mesh=None) -> Parallel:
    """Validate the user's parallelism settings (``UserError`` with one sentence naming the fix). ``mesh``: a JAX
    mesh (``planner.mesh.as_mesh``), exclusive with torch ranks."""
    if mesh is not None:
        from .mesh import as_mesh

        if world_size > 1 or kind is not None or shard_optimizer_state or shard_group is not None:
            raise UserError("--mesh plans a JAX device mesh and --world-size/--parallelism torch ranks; give one "
                            "of them.")
        return Parallel(mesh=tuple(as_mesh(mesh).items()))
    if world_size < 1:
        raise UserError(f"world size {world_size} must be at least 1.")
    if kind is None:
        kind = "zero1" if shard_optimizer_state else ("ddp" if world_size > 1 else "none")
    if kind not in PARALLELISMS:
        raise UserError(f"unknown parallelism {kind!r}; choose from {', '.join(PARALLELISMS)}.")
    if shard_optimizer_state and kind != "zero1":
        raise UserError(f"--shard-optimizer-state is ZeRO-1 and contradicts --parallelism {kind}; drop one of them.")
    if world_size == 1:
        return Parallel()
    if kind == "none":
        raise UserError(f"--world-size {world_size} needs a --parallelism (ddp, zero1, zero2, fsdp or hsdp).")
    if kind == "hsdp":
        if shard_group is None:
            raise UserError("--parallelism hsdp needs --shard-group, the number of ranks a parameter is sharded "
                            "over (it must divide --world-size).")
        if shard_group < 1 or world_size % shard_group:
            raise UserError(f"shard group {shard_group} does not divide world size {world_size}; choose a "
                            "--shard-group that divides --world-size.")
    elif shard_group is not None:
        raise UserError(f"--shard-group applies to --parallelism hsdp only, not {kind}; drop it.")
    return Parallel(kind, world_size, shard_group)


def local_spec(spec: ModelSpec, par: Parallel, index: int = 0) -> ModelSpec:
    """The model as shard ``index`` sees it (each shape its local dim-0 shard); the spec itself unless sharded.
    Shard 0 holds the largest shard of every tensor, so its state is the largest rank's."""
    if not par.sharded:
        return spec
    # the structure (stacked experts along dim 0) survives dim-0 sharding; fused splits may not: dropped
    params = [dataclasses.replace(p, shape=local_shape(p.shape, par.shards, index), splits=None, split_axis=0)
              for p in spec.params]
    return ModelSpec(params=params, buffers=spec.buffers, source=spec.source)


@lru_cache(maxsize=65536)
def local_layout_bytes(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> int:
    """State bytes of a local shard (an empty shard keeps no state)."""
    if math.prod(shape) == 0:
        return 0
    return sum(t.nbytes for t in state_layout(shape, cfg, opts))


def knapsack_scale(par: Parallel) -> int:
    """The solver sees state summed over this many ranks (owner placement) or one rank's (shard placement)."""
    return par.world if par.owner else 1


def knapsack_bytes(bytes_: int, rest: int, par: Parallel) -> int:
    """A candidate's bytes as the solver counts them against ``knapsack_scale`` × the per-rank budget: under
    DDP the element-wise rest is on every rank (× N); blocks and ZeRO state count once."""
    if par.owner and par.kind == "ddp":
        return bytes_ + rest * (par.world - 1)
    return bytes_


def unit_of(name: str) -> str:
    """The ``fully_shard`` unit of a parameter: its path up to the first integer component, else the root."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if re.fullmatch(r"\d+", part):
            return ".".join(parts[:i + 1])
    return ""


@dataclass
class RankFixed:
    """Per-rank bytes that do not depend on the optimizer choice (largest rank)."""

    params: int
    grads: int
    master: int
    comm: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.master + self.comm


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def fixed_per_rank(spec: ModelSpec, prec: Precision, par: Parallel, ranks: "RankState | None" = None) -> RankFixed:
    """Parameters, gradients, master weights and engine buffers of the largest rank (see module docstring).

    Under ZeRO the master weights (and under ZeRO-2 the gradients and the in-flight gradient) follow the tensor
    owners: ``ranks`` (``rank_state``'s assignment) gives them exactly; without it (before the optimizer choice
    fixes the assignment) a bound: an even share plus the largest tensor."""
    if par.mesh is not None:  # split like the parameters (planner.mesh); every device holds the same
        from .mesh import fixed_by_device

        specs = {p.name: p.spec or () for p in spec.params}
        params_d, grads_d, master_d = fixed_by_device(spec, prec, par.mesh_sizes, specs)
        return RankFixed(max(params_d), max(grads_d), max(master_d), 0)
    params = sum(prec.param_bytes(p) for p in spec.params)
    grads = sum(prec.grad_bytes(p) for p in spec.params)
    master = sum(prec.master_bytes(p) for p in spec.params)
    if par.kind in ("none",) or par.world == 1:
        return RankFixed(params, grads, master, 0)
    if par.kind in OWNER_KINDS:
        n = par.world
        if par.kind == "ddp":
            return RankFixed(params, grads, master, grads)
        top_grad = max((prec.grad_bytes(p) for p in spec.params), default=0)
        top_master = max((prec.master_bytes(p) for p in spec.params), default=0)
        if ranks is not None and ranks.master_by_rank:
            master_r = max(ranks.master_by_rank)
        else:
            master_r = min(master, _ceil_div(master, n) + top_master)
        if par.kind == "zero1":
            return RankFixed(params, grads, master_r, grads)
        if ranks is not None and ranks.grads_by_rank:
            return RankFixed(params, max(ranks.grads_by_rank), master_r, max(ranks.inflight_by_rank))
        return RankFixed(params, min(grads, _ceil_div(grads, n) + top_grad), master_r, top_grad)
    s = par.shards

    def shard(p: ParamSpec, nbytes: int) -> int:
        if not p.shape or p.numel == 0:
            return nbytes
        return nbytes // p.numel * padded_rows(p.shape[0], s) * (p.numel // p.shape[0])

    params_r = sum(shard(p, prec.param_bytes(p)) for p in spec.params)
    grads_r = sum(shard(p, prec.grad_bytes(p)) for p in spec.params)
    master_r = sum(shard(p, prec.master_bytes(p)) for p in spec.params)
    gather: dict[str, int] = {}
    scatter: dict[str, int] = {}
    for p in spec.params:
        u = unit_of(p.name)
        gather[u] = gather.get(u, 0) + shard(p, prec.param_bytes(p)) * s
        scatter[u] = scatter.get(u, 0) + shard(p, prec.grad_bytes(p)) * s
    comm = 2 * max(gather.values(), default=0) + max(scatter.values(), default=0)
    return RankFixed(params_r, grads_r, master_r, comm)


# ---- owner placement: which rank keeps which block ----

@dataclass
class Unit:
    """One piece of state that sits on one rank: a preconditioner block, or a tensor's element-wise rest."""

    tensor: str
    block: int | None  # flat block index; None for the element-wise rest
    nbytes: int
    seconds: float
    elements: int = 0  # direction elements the owner sends (blocks only)
    extra: int = 0  # bytes that go with the unit to its owner (its gradient, master copy), balanced, not state


def _block_seconds(bshape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults, timer) -> float:
    """Predicted seconds per step of one block: the profile's time of a block-shaped tensor, else flops/1e9."""
    if timer is not None:
        solo = cfg.model_copy(update={"block_size": None}) if cfg.method != "blocked_shampoo" else cfg
        return timer(bshape, solo)[0] / 1e3
    k = len(bshape)
    numel = math.prod(bshape)
    root = sum(d**3 for d in bshape) * 10 / opts.precondition_frequency
    return (root + 2 * numel * sum(bshape) * (k + 1)) / 1e9


def units_for(p: ParamSpec, cfg: MethodConfig, opts: OptimizerDefaults, par: Parallel, timer=None) -> list[Unit]:
    """The owner-placed units of one tensor: one per block, plus its element-wise rest under ZeRO."""
    from ..methods.blocking import matrix_plan

    layout = state_layout(p.shape, cfg, opts)
    out = []
    bb = block_bytes(layout)
    if bb:
        mp = matrix_plan(p.shape, cfg.block_size, opts.merge_dims, opts.max_precond_dim)
        shapes = [bshape for bshape, count in mp.groups for _ in range(count)]
        secs: dict[tuple, float] = {}
        for j, (nb, bshape) in enumerate(zip(bb, shapes)):
            if bshape not in secs:
                secs[bshape] = _block_seconds(bshape, cfg, opts, timer)
            out.append(Unit(p.name, j, nb, secs[bshape], math.prod(bshape)))
    if par.kind != "ddp":
        out.append(Unit(p.name, None, rest_bytes(layout), p.numel * 2e-9, p.numel))
    return out


def tensor_unit(p: ParamSpec, cfg: MethodConfig, opts: OptimizerDefaults, timer=None, extra: int = 0) -> Unit:
    """ZeRO-2's unit: a whole tensor (all its blocks and its element-wise rest) on one rank, with ``extra`` bytes
    (its gradient and master copy) going along."""
    parts = units_for(p, cfg, opts, Parallel("zero1", 2), timer)
    return Unit(p.name, None, sum(u.nbytes for u in parts), sum(u.seconds for u in parts), p.numel, extra)


def assign_owners(units: list[Unit], world: int, base_bytes: int = 0) -> tuple[list[int], list[int], list[float]]:
    """Greedy longest-first assignment balancing time and bytes together: units in decreasing order of their
    larger share (of all seconds, of all bytes) go to the rank whose larger normalised load grows least.
    A unit's bytes are its state plus its ``extra`` (gradient, master copy under ZeRO).
    Returns (owner per unit, bytes per rank, seconds per rank); every rank starts with ``base_bytes``."""
    tb = sum(u.nbytes + u.extra for u in units) or 1
    ts = sum(u.seconds for u in units) or 1.0
    loads_b = [base_bytes] * world
    loads_s = [0.0] * world
    owner = [0] * len(units)
    order = sorted(range(len(units)), key=lambda i: -max((units[i].nbytes + units[i].extra) / tb,
                                                         units[i].seconds / ts))
    for i in order:
        u = units[i]
        size = u.nbytes + u.extra
        best = min(range(world), key=lambda r: (max((loads_b[r] + size) / tb, (loads_s[r] + u.seconds) / ts),
                                                 loads_b[r], r))
        owner[i] = best
        loads_b[best] += size
        loads_s[best] += u.seconds
    return owner, loads_b, loads_s


@dataclass
class RankState:
    """Optimizer state per rank and, under the owner placement, who owns what."""

    by_rank: list[int]
    seconds_by_rank: list[float] = field(default_factory=list)
    owners: dict[str, list[int]] = field(default_factory=dict)  # tensor → owner per block
    rest_owner: dict[str, int] = field(default_factory=dict)  # tensor → owner of its element-wise rest (ZeRO)
    exchange: int = 0  # bytes of the owner placement's exchange buffers on one rank (largest tensor's)
    grads_by_rank: list[int] = field(default_factory=list)  # gradients each rank holds after backward (owner kinds)
    master_by_rank: list[int] = field(default_factory=list)  # fp32 master copies each rank keeps (owner kinds)
    inflight_by_rank: list[int] = field(default_factory=list)  # ZeRO-2: largest non-owned gradient being reduced

    @property
    def largest(self) -> int:
        return max(self.by_rank, default=0)


def rank_state(spec: ModelSpec, configs: dict[str, MethodConfig], opts: OptimizerDefaults, par: Parallel,
               timer=None, owners: dict[str, list[int]] | None = None,
               rest_owner: dict[str, int] | None = None, prec: Precision | None = None) -> RankState:
    """Optimizer-state bytes of every rank. Owner placement: assigned here (or the given ``owners`` /
    ``rest_owner`` from a plan; ZeRO-2 at tensor granularity, balancing each tensor's gradient and master bytes
    under ``prec`` too) with each rank's gradients and master copies; shard placement: the layouts of every shard's
    local shapes."""
    shapes = {p.name: p for p in spec.params}
    if par.sharded:
        by_rank = [0] * par.shards
        for n, c in configs.items():
            shape = shapes[n].shape
            for r in range(par.shards):
                local = local_shape(shape, par.shards, r)
                if r and local == local_shape(shape, par.shards, r - 1):
                    by_rank[r] += last
                else:
                    last = local_layout_bytes(local, c, opts)
                    by_rank[r] += last
        return RankState(by_rank)
    if not par.owner:
        total = sum(local_layout_bytes(shapes[n].shape, c, opts) for n, c in configs.items())
        return RankState([total])
    prec = prec or Precision()
    zero2 = par.kind == "zero2"
    units: list[Unit] = []
    replicated = 0
    for n, c in configs.items():
        p = shapes[n]
        if zero2:
            units.append(tensor_unit(p, c, opts, timer, prec.grad_bytes(p) + prec.master_bytes(p)))
            continue
        mine = units_for(p, c, opts, par, timer)
        if par.kind == "zero1":
            mine[-1].extra = prec.master_bytes(p)  # the rest's owner keeps the master copy
        units += mine
        if par.kind == "ddp":
            replicated += rest_bytes(state_layout(p.shape, c, opts))
    if owners is None:
        who = assign_owners(units, par.world, replicated)[0]
    else:
        who = []
        for u in units:
            r = owners[u.tensor][u.block] if u.block is not None else rest_owner[u.tensor]
            if zero2 and any(b != r for b in owners.get(u.tensor) or []):
                raise UserError(f"tensor {u.tensor!r} has blocks on several ranks, which a zero2 plan never assigns; "
                                "regenerate the plan.")
            if not 0 <= r < par.world:
                raise UserError(f"tensor {u.tensor!r} is assigned to rank {r}, outside world size {par.world}; "
                                "regenerate the plan.")
            who.append(r)
    loads, secs = [replicated] * par.world, [0.0] * par.world
    for u, r in zip(units, who):
        loads[r] += u.nbytes
        secs[r] += u.seconds
    out_owners: dict[str, list[int]] = {}
    out_rest: dict[str, int] = {}
    owned_params = [0] * par.world
    per_tensor: dict[str, list[int]] = {}
    for u, r in zip(units, who):
        if u.block is None:
            out_rest[u.tensor] = r
            owned_params[r] += u.elements
            if zero2:
                nblocks = len(block_bytes(state_layout(shapes[u.tensor].shape, configs[u.tensor], opts)))
                if nblocks:
                    out_owners[u.tensor] = [r] * nblocks
        else:
            out_owners.setdefault(u.tensor, []).append(r)
            per_tensor.setdefault(u.tensor, [0] * par.world)[r] += u.elements
    # directions are exchanged tensor by tensor: none when one rank owns all its blocks and its element-wise rest
    # (ZeRO; it applies the direction itself), a broadcast of the tensor's directions when one rank owns all its
    # blocks, else an all_gather (a send buffer and N receive buffers padded to the rank owning most of it), in
    # float32 (8 bytes for float64 state); then, under ZeRO, one owner's packed parameters at a time (broadcast)
    wide = 8 if opts.state_dtype == "float64" else 4
    exchange = 0
    for t, elems in per_tensor.items():
        holders = [r for r, e in enumerate(elems) if e]
        if len(holders) == 1 and out_rest.get(t) == holders[0]:
            continue
        exchange = max(exchange, (sum(elems) if len(holders) == 1 else (par.world + 1) * max(elems)) * wide)
    pwide = 8 if any(shapes[n].dtype == "float64" for n in configs) else 4
    exchange = max(exchange, max(owned_params) * pwide)
    # gradients and master copies per rank (module docstring); gradients of tensors outside ``configs`` (left
    # out of the optimizer) stay whole on every rank
    grads = [sum(prec.grad_bytes(p) for p in spec.params if p.name not in configs)] * par.world
    master = [0] * par.world
    inflight = [0] * par.world
    for n in configs:
        g, m = prec.grad_bytes(shapes[n]), prec.master_bytes(shapes[n])
        if par.kind == "ddp":
            master = [x + m for x in master]
        else:
            master[out_rest[n]] += m
        if zero2:
            grads[out_rest[n]] += g
            inflight = [x if r == out_rest[n] else max(x, g) for r, x in enumerate(inflight)]
        else:
            grads = [x + g for x in grads]
    return RankState(loads, secs, out_owners, out_rest, exchange, grads, master, inflight)


def largest_workspace(spec: ModelSpec, configs: dict[str, MethodConfig], opts: OptimizerDefaults) -> int:
    shapes = {p.name: p.shape for p in spec.params}
    return max((workspace_bytes(shapes[n], c, opts) for n, c in configs.items() if math.prod(shapes[n])),
               default=0)


def fill_totals(totals, spec: ModelSpec, prec: Precision, par: Parallel, ranks: RankState | None) -> None:
    """Set the per-rank fields of a plan's ``Totals`` (largest rank; ``state_bytes_by_rank`` lists every rank of
    one shard group under FSDP/HSDP, every rank otherwise)."""
    whole = fixed_per_rank(spec, prec, Parallel())
    totals.params_bytes, totals.grads_bytes, totals.master_bytes = whole.params, whole.grads, whole.master
    fixed = fixed_per_rank(spec, prec, par, ranks)
    totals.params_bytes_per_rank = fixed.params
    totals.grads_bytes_per_rank = fixed.grads
    totals.master_bytes_per_rank = fixed.master
    totals.comm_bytes_per_rank = fixed.comm + (ranks.exchange if ranks is not None else 0)
    totals.peak_bytes_per_rank = totals.peak_bytes
    if ranks is not None:
        totals.state_bytes_by_rank = list(ranks.by_rank)
        if par.kind in ("zero1", "zero2") and ranks.grads_by_rank:
            totals.grads_bytes_by_rank = list(ranks.grads_by_rank)
            totals.master_bytes_by_rank = list(ranks.master_by_rank)


def from_settings(settings) -> Parallel:
    """The ``Parallel`` a plan's ``Settings`` describe (older plans: ``shard_optimizer_state`` means ZeRO-1 and a
    world size above 1 without it means DDP with whole state, counted as DDP here)."""
    kind = settings.parallelism
    if getattr(settings, "mesh", None):
        return Parallel(mesh=tuple(settings.mesh.items()))
    if settings.world_size <= 1:
        return Parallel()
    if kind == "none":
        kind = "zero1" if settings.shard_optimizer_state else "ddp"
    return Parallel(kind, settings.world_size, settings.shard_group)


def settings_kwargs(settings) -> dict:
    """``make_plan`` keyword arguments that re-create a plan's parallelism."""
    par = from_settings(settings)
    return dict(world_size=par.world, parallelism=None if par.kind == "none" else par.kind,
                shard_group=par.shard_group, mesh=par.mesh_sizes)
