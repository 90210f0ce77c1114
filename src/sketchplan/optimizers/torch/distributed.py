"""The distributed torch optimizer: every method on DDP / ZeRO (owner placement) and FSDP2 / HSDP (shard
placement), on ``torch.distributed`` collectives only (docs/algorithms.md, Spreading the work over ranks; ``methods.placement`` says what each
rank allocates, and the planner counts exactly that).

**Shard placement** (parameters are ``DTensor``s sharded on dim 0 by ``fully_shard``): each rank runs the
method's ordinary update rule on its local shard (``DTensor._local_tensor`` and the local gradient), so its
state is the method's layout of the local shape, blocks never straddle a shard boundary and no communication
is added: the gradients are already reduce-scattered by FSDP2. Ranks with an empty shard keep no state.

**Owner placement** (DDP-wrapped model, every rank holds the whole averaged gradient): each preconditioner block
is owned by the rank the plan names (``TensorEntry.owners``); that rank updates the block's statistics,
refreshes its roots and computes its preconditioned direction. The directions are shared tensor by tensor
(so the buffers are the largest tensor's, not the model's): a ``broadcast`` from the owner when one rank owns
all of a tensor's blocks, else an ``all_gather`` (each rank sends its blocks, padded to the largest share). Then grafting, momentum and the
update run where the tensor's element-wise state lives: on every rank under DDP (all ranks then hold identical
parameters without another collective), on the tensor's owner rank under ZeRO, which is followed by one
``all_gather`` of the updated parameters. Adam and extreme tensoring have no blocks: under DDP every rank steps
them, under ZeRO their owner does.

**ZeRO-2** (the model is *not* wrapped in ``DistributedDataParallel``): every tensor has one owner rank
(``TensorEntry.owner``; the planner assigns whole tensors, ``planner.parallel``), which keeps all of its blocks,
its element-wise state, its master copy and its gradient. The optimizer registers a post-accumulate-grad hook on
every parameter: as soon as backward has accumulated a gradient, it is ``dist.reduce``d (sum) to the owner, which
divides it by the world size, and freed (``p.grad = None``) on every other rank. So after backward each rank holds
exactly the gradients of the tensors it owns; one gradient it does not own is alive at a time, while it is
reduced. The owner computes the tensor's direction and update alone (no direction exchange), then the owners
broadcast the updated parameters as under ZeRO-1. Parameters stay replicated: the optimizer broadcasts rank 0's
parameters when it is built (as ``DistributedDataParallel`` does when it wraps a model). One backward per
``step()``: gradient accumulation over micro-batches would add a local gradient to an already reduced one, so a
second backward before ``step()`` is refused. Gradients set by hand (no backward) are reduced by ``step()``.

**Master weights** (``master_weights`` in the plan, 16-bit parameters): the rank that applies a tensor's update
keeps its fp32 master copy (``state[p]["master"]``, ``SketchplanOptimizer.on_masters``): every rank under DDP,
the owner under ZeRO, the local shard under FSDP2/HSDP.

Host synchronisation: none beyond the single-process rules' (collectives are enqueued, not waited on by the
host, on accelerators).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ...methods.blocking import cached_partition, cached_plan
from ...methods.common import preconditioning_start
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...methods.placement import local_layout as owned_layout
from ...methods.placement import owned_by_group
from .base import RULES, SketchplanOptimizer, group_config
from .common import apply_momentum, apply_update, graft_direction
from .matrix import MatrixRule, from_blocks, graft_blocks


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The rank-local tensor of a ``DTensor`` (its shard), or ``t`` itself."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t


@dataclass
class Placement:
    """Where state lives. ``mode``: ``shard`` (FSDP2/HSDP) or ``owner`` (DDP/ZeRO). ``owners``: per parameter
    (by ``id``), the owner rank of each block in flat order; ``rest_owner``: per parameter, the rank keeping its
    element-wise state (absent: every rank, DDP)."""

    mode: str
    rank: int
    world: int
    group: object = None
    kind: str = ""  # the plan's parallelism (ddp, zero1, zero2, fsdp, hsdp)
    owners: dict[int, list[int]] = field(default_factory=dict)
    rest_owner: dict[int, int] = field(default_factory=dict)


class DistributedSketchplanOptimizer(SketchplanOptimizer):
    """``SketchplanOptimizer`` with a ``Placement`` (module docstring). Built by ``sketchplan.build_optimizer``
    from a plan made for the running process group; ``state_dict()`` holds this rank's state only."""

    def __init__(self, params, cfg: MethodConfig, opts: OptimizerDefaults, placement: Placement,
                 master_weights: bool = False):
        super().__init__(params, cfg, opts, master_weights)
        self.placement = placement
        self._reduced: set[int] = set()  # ZeRO-2: parameters whose gradient this backward has reduced
        self._hooks = []
        if placement.kind == "zero2":
            self._sync_params()
            for group in self.param_groups:
                for p in group["params"]:
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._reduce_grad))

    # ---- ZeRO-2 gradients (module docstring) ----

    def _global(self, r: int) -> int:
        pl = self.placement
        return dist.get_global_rank(pl.group, r) if pl.group is not None else r

    def _sync_params(self) -> None:
        """Every rank starts from rank 0's parameters (as ``DistributedDataParallel`` does when it wraps a model)."""
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    dist.broadcast(p.data, src=self._global(0), group=self.placement.group)

    def _reduce_grad(self, p: torch.Tensor) -> None:
        """Sum ``p``'s gradient onto its owner rank, which averages it; every other rank frees its copy."""
        from ...errors import UserError

        pl = self.placement
        if id(p) in self._reduced:
            raise UserError("a zero2 optimizer reduces each gradient during backward, so a second backward before "
                            "optimizer.step() would add to an already reduced gradient; call step() (and zero_grad) "
                            "after every backward, or plan --parallelism zero1 to accumulate micro-batches.")
        owner = pl.rest_owner[id(p)]
        with torch.no_grad():
            dist.reduce(p.grad, dst=self._global(owner), op=dist.ReduceOp.SUM, group=pl.group)
            if owner == pl.rank:
                p.grad.div_(pl.world)
            else:
                p.grad = None
        self._reduced.add(id(p))

    def remove_hooks(self) -> None:
        """Remove the ZeRO-2 gradient hooks from the parameters (the optimizer then no longer reduces)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _active_zero2(self) -> set[int]:
        """ZeRO-2: the parameters stepped now: those backward reduced, plus any gradient set by hand (reduced
        here, in parameter order, which every rank shares); the record is cleared for the next backward."""
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in self._reduced and p.grad is not None:
                    self._reduce_grad(p)
        active, self._reduced = self._reduced, set()
        return active

    # ---- state ----

    def solo(self, p: torch.Tensor) -> bool:
        """True when one rank owns all of ``p``'s blocks and its element-wise state (ZeRO; every tensor under
        ZeRO-2): that rank alone computes and applies its direction, no exchange."""
        r = self.placement.rest_owner.get(id(p))
        return r is not None and all(o == r for o in self.placement.owners.get(id(p), []))

    def local_layout(self, param: torch.Tensor, layout: list) -> list:
        """Owner placement: only the blocks (and element-wise state) this rank owns; shard placement: all of the
        local shard's layout."""
        if self.placement.mode != "owner":
            return layout
        owned = owned_by_group(self.placement.owners.get(id(param), []), layout, self.placement.rank)
        keep = self.placement.rest_owner.get(id(param), self.placement.rank) == self.placement.rank
        return owned_layout(layout, owned, keep)

    def allocate_state(self) -> None:
        """Allocate (zeros) every state tensor this rank holds, as its first step would (checkpoint loading)."""
        for group in self.param_groups:
            cfg, opts = group_config(group)
            matrix = isinstance(RULES[cfg.method], MatrixRule)
            for p in group["params"]:
                if self.placement.mode == "shard":
                    local = local_tensor(p)
                    if local.numel() == 0:
                        continue
                    self._key[id(local)] = p
                    try:
                        self.state_for(local, cfg, opts)
                    finally:
                        self._key.pop(id(local), None)
                elif (matrix and not self.solo(p)) or self.keeps_rest(p):
                    self.state_for(p, cfg, opts)
        self.allocate_masters()

    def allocate_masters(self) -> None:
        """The master copies this rank keeps: its local shards' (FSDP2), else those of the tensors it updates."""
        for group in self.param_groups:
            for p in group["params"]:
                local = local_tensor(p)
                if not self.wants_master(group, local) or local.numel() == 0:
                    continue
                if self.placement.mode == "shard" or self.keeps_rest(p):
                    self.master_of(local, p)

    def keeps_rest(self, p: torch.Tensor) -> bool:
        return self.placement.rest_owner.get(id(p), self.placement.rank) == self.placement.rank

    # ---- step ----

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.placement.mode == "shard":
            self._shard_step()
        else:
            self._owner_step()
        return loss

    def _shard_step(self) -> None:
        for group in self.param_groups:
            cfg, opts = group_config(group)
            views = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                local = local_tensor(p)
                if local.numel() == 0:
                    continue  # an empty shard keeps no state
                local.grad = local_tensor(p.grad)
                self._key[id(local)] = p
                views.append(local)
            if views:
                try:
                    for batch in self.master_batches(views, group):
                        with self.on_masters(batch, group, [self._key[id(v)] for v in batch]) as stepped:
                            RULES[cfg.method].step(self, stepped, cfg, opts)
                finally:
                    for v in views:
                        v.grad = None
                        self._key.pop(id(v), None)

    def _owner_step(self) -> None:
        pl = self.placement
        shared = []  # tensors whose updated values the owners share (ZeRO)
        active = self._active_zero2() if pl.kind == "zero2" else None
        for group in self.param_groups:
            cfg, opts = group_config(group)
            if active is None:
                params = [p for p in group["params"] if p.grad is not None]
            else:  # ZeRO-2: only owners hold a gradient; every rank knows which tensors backward reduced
                params = [p for p in group["params"] if id(p) in active]
            if not params:
                continue
            rule = RULES[cfg.method]
            shared += [p for p in params if id(p) in pl.rest_owner]
            if not isinstance(rule, MatrixRule):
                mine = [p for p in params if self.keeps_rest(p)]
                for batch in self.master_batches(mine, group):
                    with self.on_masters(batch, group) as stepped:
                        rule.step(self, stepped, cfg, opts)
                continue
            work = [p for p in params if not self.solo(p) or self.keeps_rest(p)]  # a solo tensor: its owner only
            if not work:
                continue
            states = [self.state_for(p, cfg, opts) for p in work]
            for s in states:
                s["step"] += 1
            skips = [s["nonfinite_skips"] if "nonfinite_skips" in s else
                     torch.zeros((), dtype=torch.int32, device=p.device) for p, s in zip(work, states)]
            grads = self.sanitize([p.grad for p in work], skips, states[0]["step"], opts)
            for p, g, s in zip(work, grads, states):
                # one exchange per tensor: its buffers are the largest tensor's, not the model's
                item = self._own_blocks(rule, p, g, s, cfg, opts)
                item["group"] = group
                if self.solo(p):  # this rank owns every block: its own directions, nothing to exchange
                    blocks = {gi: d.to(item["g"].dtype) for gi, d in item["mine"].items()}
                else:
                    blocks = self._exchange_directions([item])[0]
                self._finish(item, blocks)
                del item
        if shared:
            self._exchange_params(shared)

    def _own_blocks(self, rule: MatrixRule, p, grad, state, cfg, opts):
        """Statistics, roots and directions of the blocks this rank owns; returns the tensor's work item."""
        pl = self.placement
        step = state["step"]
        g = grad.to(getattr(torch, opts.state_dtype))
        mp = cached_plan(tuple(p.shape), cfg.block_size, opts.merge_dims, opts.max_precond_dim)
        item = {"p": p, "g": g, "state": state, "cfg": cfg, "opts": opts, "mp": mp, "groups": None,
                "owners": [], "mine": {}, "active": False}
        if mp.fallback is not None:
            return item
        groups = cached_partition(mp.merged, cfg.block_size)
        owners = pl.owners[id(p)]
        item["groups"], item["owners"] = groups, owners
        merged = g.reshape(mp.merged)
        start = preconditioning_start(opts, rule.stored_roots)
        item["active"] = step >= start
        refresh = item["active"] and (step - start) % opts.precondition_frequency == 0
        flat = 0
        for gi, grp in enumerate(groups):
            idx = [j for j in range(grp.count) if owners[flat + j] == pl.rank]
            flat += grp.count
            if not idx:
                continue
            gb = torch.stack([merged[grp.slices[j]] for j in idx])
            if (step - 1) % opts.stats_every == 0:
                rule.update_statistics(state, gi, gb, step, cfg, opts)
            if item["active"]:
                if refresh:
                    rule.refresh_roots(state, gi, mp.order, opts)
                item["mine"][gi] = rule.precondition(state, gi, gb, opts)
        return item

    def _exchange_directions(self, pending: list[dict]) -> list[dict]:
        """One all_gather of every rank's block directions; returns, per item, {group: stacked directions}."""
        pl = self.placement
        order = []  # (item index, group, block, numel, owner) in the one order every rank agrees on
        for k, it in enumerate(pending):
            if not it["active"]:
                continue
            flat = 0
            for gi, grp in enumerate(it["groups"]):
                numel = 1
                for d in grp.shape:
                    numel *= d
                for j in range(grp.count):
                    order.append((k, gi, j, numel, it["owners"][flat + j]))
                flat += grp.count
        if not order:
            return [{} for _ in pending]
        owners = {r for *_, r in order}
        if len(pending) == 1 and len(owners) == 1:  # one owner: a broadcast, no padding
            it, (r,) = pending[0], owners
            if r == pl.rank:
                buf = torch.cat([it["mine"][gi].reshape(-1) for gi in sorted(it["mine"])]).to(torch.float32
                                                                                             if it["g"].dtype != torch.float64 else torch.float64)
            else:
                buf = torch.empty(sum(n for *_, n, _ in order), dtype=torch.float64 if it["g"].dtype == torch.float64
                                  else torch.float32, device=it["g"].device)
            dist.broadcast(buf, src=dist.get_global_rank(pl.group, r) if pl.group is not None else r, group=pl.group)
            out, offset = {}, 0
            for gi, grp in enumerate(it["groups"]):
                numel = grp.count
                for d in grp.shape:
                    numel *= d
                out[gi] = buf[offset:offset + numel].reshape((grp.count,) + tuple(grp.shape)).to(it["g"].dtype)
                offset += numel
            return [out]
        sizes = [0] * pl.world
        for *_, numel, r in order:
            sizes[r] += numel
        width = max(sizes)
        dtype = torch.float64 if any(it["g"].dtype == torch.float64 for it in pending) else torch.float32
        device = pending[0]["g"].device
        send = torch.zeros(width, dtype=dtype, device=device)
        pieces = [it["mine"][gi].reshape(it["mine"][gi].shape[0], -1) for it in pending for gi in sorted(it["mine"])]
        if pieces:
            mine = torch.cat([x.reshape(-1) for x in pieces]).to(dtype)
            send[:mine.numel()] = mine
        recv = [torch.empty_like(send) for _ in range(pl.world)]
        dist.all_gather(recv, send, group=pl.group)
        offsets = [0] * pl.world
        out: list[dict] = [{} for _ in pending]
        by_block: dict[tuple, torch.Tensor] = {}
        for k, gi, j, numel, r in order:
            by_block[(k, gi, j)] = recv[r][offsets[r]:offsets[r] + numel]
            offsets[r] += numel
        for k, it in enumerate(pending):
            if not it["active"]:
                continue
            for gi, grp in enumerate(it["groups"]):
                blocks = [by_block[(k, gi, j)].reshape(grp.shape) for j in range(grp.count)]
                out[k][gi] = torch.stack(blocks).to(it["g"].dtype)
        return out

    def _finish(self, item: dict, blocks: dict) -> None:
        """Graft, momentum and the update, where the tensor's element-wise state lives."""
        p, state, cfg, opts = item["p"], item["state"], item["cfg"], item["opts"]
        if not self.keeps_rest(p):
            return
        g, mp = item["g"], item["mp"]
        a = graft_direction(state, g, cfg.graft, opts, state["step"])
        direction = a
        if item["active"]:
            from .matrix import to_blocks

            groups = item["groups"]
            a_blocks = to_blocks(a.reshape(mp.merged), groups)
            d_blocks = [blocks[gi] if cfg.graft == "none" else graft_blocks(blocks[gi], ab)
                        for gi, ab in enumerate(a_blocks)]
            direction = from_blocks(d_blocks, groups, mp.merged).reshape(p.shape)
        update = apply_momentum(state, direction, opts.betas[0], opts.nesterov)
        if self.wants_master(item["group"], p):  # step the fp32 master, write it back rounded
            master = self.master_of(p, p)
            apply_update(master, update, opts.lr, opts.weight_decay)
            p.copy_(master)
        else:
            apply_update(p, update, opts.lr, opts.weight_decay)

    def _exchange_params(self, params: list[torch.Tensor]) -> None:
        """ZeRO: each owner broadcasts its updated tensors, packed in one flat buffer per owner rank (one buffer of
        the largest owner's size is alive at a time)."""
        pl = self.placement
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        for r in range(pl.world):
            mine = [p for p in params if pl.rest_owner[id(p)] == r]
            if not mine:
                continue
            if r == pl.rank:
                buf = torch.cat([p.reshape(-1).to(dtype) for p in mine])
            else:
                buf = torch.empty(sum(p.numel() for p in mine), dtype=dtype, device=mine[0].device)
            dist.broadcast(buf, src=dist.get_global_rank(pl.group, r) if pl.group is not None else r, group=pl.group)
            if r != pl.rank:
                offset = 0
                for p in mine:
                    n = p.numel()
                    p.copy_(buf[offset:offset + n].reshape(p.shape).to(p.dtype))
                    offset += n
            del buf


OWNER_KINDS = ("ddp", "zero1", "zero2")
SHARD_KINDS = ("fsdp", "hsdp")


def is_dtensor(t) -> bool:
    return hasattr(t, "_local_tensor") and hasattr(t, "placements")


def _shards(p) -> int:
    """Ranks a DTensor parameter's dim 0 is sharded over (1 when it is not sharded on dim 0)."""
    n = 1
    for i, pl in enumerate(p.placements):
        if pl.is_shard() and getattr(pl, "dim", None) == 0:
            n *= p.device_mesh.size(i)
    return n


def check_running(kind: str, world: int, shard_group: int | None, params: list[torch.Tensor], wrapped_ddp: bool,
                  process_group=None) -> None:
    """Refuse, in one sentence, a plan whose parallelism or world size is not what this process runs."""
    from ...errors import UserError

    dtensors = any(is_dtensor(p) for p in params)
    initialized = dist.is_available() and dist.is_initialized()
    running = dist.get_world_size(process_group) if initialized else 1
    if world <= 1:
        if (dtensors and running > 1) or (wrapped_ddp and running > 1):
            how = "fsdp" if dtensors else "ddp"
            raise UserError(f"the plan was made for a single device but the model runs on {running} ranks "
                            f"({'FSDP2 DTensor parameters' if dtensors else 'DistributedDataParallel'}); regenerate "
                            f"it with `sketchplan plan --world-size {running} --parallelism {how}`.")
        return
    if not initialized:
        raise UserError(f"the plan was made for {world} ranks ({kind}) but torch.distributed is not initialized; "
                        "start the script with torchrun (init_process_group), or plan with --world-size 1.")
    if kind in OWNER_KINDS:
        if kind == "zero2" and wrapped_ddp:
            raise UserError("a zero2 plan reduces each gradient to its owner rank itself; pass the model unwrapped "
                            "(no DistributedDataParallel, which would keep whole gradients on every rank) to "
                            "build_optimizer and train it as it is.")
        if running != world:
            raise UserError(f"the plan was made for world size {world} but the process group has {running} ranks; "
                            f"regenerate it with --world-size {running}.")
        if dtensors:
            raise UserError(f"the plan was made for --parallelism {kind} but the model's parameters are DTensors "
                            "(FSDP2); regenerate it with --parallelism fsdp.")
        return
    if not dtensors:
        raise UserError(f"the plan was made for --parallelism {kind} but the model's parameters are not DTensors; "
                        "apply torch.distributed.fsdp.fully_shard before build_optimizer, or regenerate the plan "
                        "with --parallelism ddp.")
    shards = (shard_group or world) if kind == "hsdp" else world
    world_seen = max((p.device_mesh.size() for p in params if is_dtensor(p)), default=running)
    if world_seen != world:
        raise UserError(f"the plan was made for world size {world} but the model is sharded over a {world_seen}-rank "
                        f"mesh; regenerate it with --world-size {world_seen}.")
    for p in params:
        if is_dtensor(p) and _shards(p) not in (1, shards):
            raise UserError(f"the plan shards parameters over {shards} ranks but the model shards them over "
                            f"{_shards(p)}; regenerate it with the model's --world-size/--shard-group.")


def build_distributed(param_groups: list[dict], cfg: MethodConfig, opts: OptimizerDefaults, *, kind: str,
                      world: int, names: dict[int, str], owners: dict[str, list[int]], rest_owner: dict[str, int],
                      process_group=None, master_weights: bool = False) -> DistributedSketchplanOptimizer:
    """The distributed optimizer for a plan made for ``kind`` on ``world`` ranks (call ``check_running`` first).
    ``names``: id(param) → plan name; ``owners`` / ``rest_owner``: the plan's block and element-wise owners;
    ``master_weights``: keep fp32 master copies of 16-bit parameters (module docstring)."""
    from ...errors import UserError
    from ...methods import state_layout
    from ...methods.placement import block_counts

    rank = dist.get_rank(process_group)
    if kind in SHARD_KINDS:
        placement = Placement("shard", rank, world, process_group, kind=kind)
    else:
        placement = Placement("owner", rank, world, process_group, kind=kind)
        for g in param_groups:
            gcfg, gopts = group_config({**{k: v for k, v in g.items() if k != "params"}})
            if gcfg.method == "soap" or gcfg.packed:  # issue 19b
                raise UserError(f"the {kind} placement does not run {gcfg.label()} yet; plan with --parallelism "
                                "fsdp, or without soap and packed factors (the planner leaves them out for ddp/zero).")
            for p in g["params"]:
                name = names[id(p)]
                need = sum(block_counts(state_layout(tuple(p.shape), gcfg, gopts)))
                got = owners.get(name) or []
                if len(got) != need:
                    raise UserError(f"tensor {name!r} has {need} preconditioner blocks but the plan assigns "
                                    f"{len(got)} to ranks; regenerate the plan.")
                if need:
                    placement.owners[id(p)] = list(got)
                if kind != "ddp":
                    if name not in rest_owner:
                        raise UserError(f"tensor {name!r} has no owner rank in the {kind} plan; regenerate it.")
                    placement.rest_owner[id(p)] = rest_owner[name]
                if kind == "zero2" and any(r != rest_owner[name] for r in got):
                    raise UserError(f"tensor {name!r} has blocks on several ranks, which a zero2 plan never "
                                    "assigns; regenerate the plan.")
    return DistributedSketchplanOptimizer(param_groups, cfg, opts, placement, master_weights)
