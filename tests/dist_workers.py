"""Workers of the multi-process tests (``torch.multiprocessing.spawn``, gloo on CPU): a tiny transformer trained
under DDP, ZeRO-1, ZeRO-2 and FSDP2 with every method, against single-process references written without any
distributed code. Each worker writes a JSON report per scenario; the tests assert on the reports. ZeRO-2 runs
the model unwrapped (the optimizer reduces each gradient to its owner); its reports also give each rank's
gradient bytes after every backward and any gradient held for a tensor the rank does not own. Method names
ending in ``_bf16`` train a bfloat16 model with fp32 master weights (``bf16_reference`` is the reference)."""

from __future__ import annotations

import json
import datetime
import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.nn as nn

V, D, T, BATCH = 24, 16, 6, 8
STEPS = 20


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)  # a key bias has a zero gradient (softmax shift)
        self.proj = nn.Linear(D, D, bias=False)
        self.up = nn.Linear(D, 2 * D)
        self.down = nn.Linear(2 * D, D)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / D**0.5, dim=-1)
        x = x + self.proj(att @ v)
        return x + self.down(torch.relu(self.up(x)))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.layers:
            x = b(x)
        return self.head(x)


def model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def batches(steps: int = STEPS):
    g = torch.Generator().manual_seed(123)
    return [torch.randint(0, V, (BATCH, T + 1), generator=g) for _ in range(steps)]


def loss_of(m, batch):
    logits = m(batch[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, V), batch[:, 1:].reshape(-1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configs():
    from sketchplan.methods.layout import MethodConfig

    return {
        "adam": MethodConfig(method="adam"),
        "shampoo": MethodConfig(method="shampoo", graft="adam"),
        "blocked_shampoo": MethodConfig(method="blocked_shampoo", block_size=8, graft="adafactor"),
        "sketchy": MethodConfig(method="sketchy", rank=4, graft="adam"),
        "extreme_tensoring": MethodConfig(method="extreme_tensoring", momentum="float32"),
        "kradagrad": MethodConfig(method="kradagrad", block_size=16, graft="sgd", momentum="none"),
    }


def extra_configs():
    """Issue 19b: SOAP and packed factors, run under FSDP2 only (the DDP/ZeRO placement leaves them out)."""
    from sketchplan.methods.layout import MethodConfig

    return {"soap": MethodConfig(method="soap", block_size=8),
            "shampoo_packed": MethodConfig(method="shampoo", graft="adam", packed=True),
            # issue 19 part A: Adafactor and Lion everywhere, Muon under DDP/ZeRO (FSDP shards its matrices)
            "adafactor": MethodConfig(method="adafactor", momentum="float32"),
            "lion": MethodConfig(method="lion"),
            "muon": MethodConfig(method="muon")}


def mixed(p):
    """A plan mixing methods tensor by tensor (several param groups, diagonal and matrix methods together)."""
    order = list(configs().values())
    return order[sum(map(ord, p.name)) % len(order)]


def defaults():
    from sketchplan.methods.layout import OptimizerDefaults

    # absolute ε: with the default relative ε (ε·λ_max) the statistics of a norm bias, rank ≤ 5 at the first
    # refresh, are conditioned ~1/ε, and a 1e-7 relative perturbation of the gradients (an all-reduce's
    # rounding) moves that bias by 6e-3 relative in a single process already: the comparison would test the
    # conditioning, not the distribution. The relative path itself is shared (``rule.refresh_roots``).
    return OptimizerDefaults(lr=3e-3, shampoo_eps=1e-6, precondition_frequency=5, et_max_dim=8, merge_dims=8,
                             epsilon_mode="absolute")


def state_bytes(opt) -> int:
    """Optimizer state as the plan counts it: every state tensor but the fp32 master copies (master weights)."""
    return sum(v.nbytes for s in opt.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "master")


def reference(cfg, opts, world: int, sharded: bool) -> dict[str, torch.Tensor]:
    from sketchplan.methods.layout import MethodConfig

    """Single process, no torch.distributed: the whole batch; under FSDP every parameter's dim-0 chunks
    (torch.chunk, as fully_shard cuts them) are separate tensors of one plain optimizer, as each rank sees them."""
    from sketchplan.optimizers.torch import SketchplanOptimizer, group_options

    m = model()
    params = dict(m.named_parameters())
    if callable(cfg) and not isinstance(cfg, MethodConfig):  # a per-tensor mix: the single-device plan's optimizer
        import sketchplan
        from sketchplan.planner.make import plan_from_configs

        with torch.device("meta"):
            meta = TinyLM()
        opt = sketchplan.build_optimizer(plan_from_configs(meta, cfg, opts), m)
    elif sharded:
        views = {n: [c.detach().clone().requires_grad_(True) for c in torch.chunk(p.detach(), world) if c.numel()]
                 for n, p in params.items()}
        opt = SketchplanOptimizer([{"params": [c for cs in views.values() for c in cs],
                                    **group_options(cfg, opts)}], cfg, opts)
    else:
        opt = SketchplanOptimizer([{"params": list(params.values()), **group_options(cfg, opts)}], cfg, opts)
    for batch in batches():
        m.zero_grad()
        loss_of(m, batch).backward()
        if sharded:
            for n, p in params.items():
                for c, gc in zip(views[n], torch.chunk(p.grad, world)):
                    c.grad = gc.clone()
        opt.step()
        if sharded:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(torch.cat([c.detach() for c in views[n]]))
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def run_check(rank: int, world: int, kind: str, method: str) -> dict:
    """``sketchplan check --measure`` as ``torchrun`` runs it on every rank (verify.check with a meta model)."""
    from sketchplan.planner.make import plan_from_configs
    from sketchplan.verify import check

    with torch.device("meta"):
        meta = TinyLM()
    plan = plan_from_configs(meta, configs()[method], defaults(), world_size=world, parallelism=kind)
    with torch.device("meta"):
        meta = TinyLM()
    report = check(plan, meta, measure=True)
    return {"kind": "check-" + kind, "method": method, "rank": rank, "ok": report.ok,
            "measured": report.measured.measured_state_bytes, "note": report.measured.note,
            "predicted": plan.totals.state_bytes_by_rank[rank]}


def grad_bytes(m) -> int:
    """Bytes of every gradient the model's parameters hold (nothing else holds one: no DDP buckets)."""
    return sum(p.grad.nbytes for p in m.parameters() if p.grad is not None)


def rank_mean_grads(m, batch, world: int) -> dict[str, torch.Tensor]:
    """The gradients the owners hold after a ZeRO-2 backward, computed in one process: each rank's slice of the
    batch backpropagated alone, summed in the parameters' dtype, divided by the world size."""
    per = BATCH // world
    total: dict[str, torch.Tensor] = {}
    for r in range(world):
        m.zero_grad()
        loss_of(m, batch[r * per:(r + 1) * per]).backward()
        for n, p in m.named_parameters():
            total[n] = p.grad.clone() if n not in total else total[n] + p.grad
    m.zero_grad()
    return {n: g / world for n, g in total.items()}


def bf16_single(cfg, opts, world: int) -> dict[str, torch.Tensor]:
    """The single-process sketchplan optimizer with master weights on the same bf16 model and gradients
    (``rank_mean_grads``): the fp32 masters after ``STEPS`` steps."""
    import sketchplan
    from sketchplan.planner.make import plan_from_configs

    with torch.device("meta"):
        meta = TinyLM().to(torch.bfloat16)
    m = model().to(torch.bfloat16)
    opt = sketchplan.build_optimizer(plan_from_configs(meta, cfg, opts, master_weights=True), m)
    for batch in batches():
        grads = rank_mean_grads(m, batch, world)
        for n, p in m.named_parameters():
            p.grad = grads[n]
        opt.step()
    return {n: opt.state[p]["master"].clone() for n, p in m.named_parameters()}


def bf16_reference(world: int, steps: int = STEPS, lr: float = 3e-3, betas=(0.9, 0.999), eps: float = 1e-8):
    """AdamW on fp32 master weights of a bfloat16 model, written here without sketchplan: each step the bf16
    model (parameters = the masters rounded) computes each rank's half-batch gradients in bf16, they are summed and
    halved in bf16 (what ``dist.reduce`` then the owner's division do, exactly for 2 ranks), and the masters take
    the update in float32: m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g², θ ← θ − η/(1−β1ᵗ) · m / (√(v/(1−β2ᵗ)) + ε).
    Returns the final fp32 masters by name."""
    m = model().to(torch.bfloat16)
    params = dict(m.named_parameters())
    master = {n: p.detach().float() for n, p in params.items()}  # the bf16 model's weights, in fp32
    mom = {n: torch.zeros_like(t) for n, t in master.items()}
    vel = {n: torch.zeros_like(t) for n, t in master.items()}
    for t, batch in enumerate(batches(steps), 1):
        grads = rank_mean_grads(m, batch, world)
        for n, p in params.items():
            g = grads[n].float()
            mom[n] = betas[0] * mom[n] + (1 - betas[0]) * g
            vel[n] = betas[1] * vel[n] + (1 - betas[1]) * g * g
            denom = (vel[n] / (1 - betas[1] ** t)).sqrt() + eps
            master[n] = master[n] - lr / (1 - betas[0] ** t) * mom[n] / denom
            with torch.no_grad():
                p.copy_(master[n])
    return master


def gather_masters(opt, m, owner: dict, kind: str, rank: int) -> dict[str, torch.Tensor]:
    """Every tensor's fp32 master, broadcast from the rank keeping it (its owner under ZeRO, every rank under DDP),
    or gathered from the local shards (FSDP2)."""
    out = {}
    for n, p in m.named_parameters():
        if kind in ("fsdp", "hsdp"):  # each rank keeps its local shard's master
            from torch.distributed.tensor import DTensor

            out[n] = DTensor.from_local(opt.state[p]["master"], p.device_mesh, p.placements, shape=p.shape,
                                        stride=p.stride()).full_tensor()
            continue
        r = owner[n] if kind in ("zero1", "zero2") else 0
        buf = opt.state[p]["master"].clone() if r == rank else torch.empty(p.shape, dtype=torch.float32)
        dist.broadcast(buf, r)
        out[n] = buf
    return out


#: bf16 scenarios compare the masters after this many steps to float32 tolerance: later, one master rounding to
#: another bf16 value than the reference's (a 1e-7 difference crossing a rounding boundary) changes the next
#: gradients by bf16 rounding and the runs part by O(lr) (measured: all masters within 1.2e-7 up to step 5,
#: 6.5e-4 apart at step 10), so steps 6-20 are held to a bound of a few learning rates only.
BF16_TIGHT_STEPS = 5


def run_scenario(rank: int, world: int, kind: str, method: str, out_dir: str, ckpt_dir: str | None) -> dict:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sketchplan
    from sketchplan.planner.make import plan_from_configs

    bf16 = method.endswith("_bf16")
    base = method[:-len("_bf16")] if bf16 else method
    cfg, opts = (mixed if method == "mixed" else {**configs(), **extra_configs()}[base]), defaults()
    if method == "soap":  # first basis from full-rank statistics: a rank-deficient factor's null-space basis is
        # arbitrary, and the all-reduce's rounding would pick another one than the reference (SOAP's Adam scaling
        # depends on it; Shampoo's roots do not)
        opts = opts.model_copy(update={"start_preconditioning_step": 12})
    with torch.device("meta"):
        meta = TinyLM().to(torch.bfloat16) if bf16 else TinyLM()
    group = 2 if kind == "hsdp" else None
    plan = plan_from_configs(meta, cfg, opts, world_size=world, parallelism=kind, shard_group=group,
                             master_weights=bf16)  # a bf16 model: fp32 master weights
    m = model().to(torch.bfloat16) if bf16 else model()
    if kind in ("fsdp", "hsdp"):
        mesh = None
        if kind == "hsdp":  # replicate over world/2 groups, shard inside each group of 2
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("replicate", "shard"))
        for b in m.layers:
            fully_shard(b, mesh=mesh)
        fully_shard(m, mesh=mesh)
        wrapped = m
    elif kind == "zero2":
        wrapped = m  # the optimizer reduces the gradients itself
    else:
        wrapped = DDP(m)
    opt = sketchplan.build_optimizer(plan, wrapped)
    data = batches()
    per = BATCH // world
    report = {"kind": kind, "method": method, "rank": rank}
    names = {id(p): n for n, p in m.named_parameters()}
    owner = {e.name: e.owner for e in plan.tensors}
    grads_seen, foreign = set(), set()
    for step, batch in enumerate(data, 1):
        opt.zero_grad()
        loss_of(wrapped, batch[rank * per:(rank + 1) * per]).backward()
        if kind == "zero2":
            grads_seen.add(grad_bytes(m))
            foreign |= {names[id(p)] for p in m.parameters() if p.grad is not None and owner[names[id(p)]] != rank}
        opt.step()
        if bf16 and step == BF16_TIGHT_STEPS:
            early = gather_masters(opt, m, owner, kind, rank)
        if step == 10 and ckpt_dir:
            from sketchplan.checkpoint import save

            save(opt, wrapped, ckpt_dir)
            if kind == "fsdp" and method == "adam":  # what a reshard to another world size must restore
                snap = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                        for n, p in m.named_parameters()}
                moments = {n: opt.state[p]["exp_avg_sq"] for n, p in m.named_parameters()}
                full = {}
                for n, p in m.named_parameters():
                    from torch.distributed.tensor import DTensor

                    full[n] = DTensor.from_local(moments[n], p.device_mesh, p.placements, shape=p.shape,
                                                 stride=p.stride()).full_tensor()
                if rank == 0:
                    torch.save({"params": snap, "exp_avg_sq": full}, os.path.join(ckpt_dir, "..",
                                                                                  "fsdp-adam-step10.pt"))
        if step == 1:
            report["state_bytes"] = state_bytes(opt)
            from sketchplan.testing import assert_rank_matches_plan

            try:
                report["measured"] = assert_rank_matches_plan(opt, wrapped, plan)["measured_bytes"]
            except AssertionError as exc:
                report["measured"] = str(exc)
    full = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in m.named_parameters()}
    report["predicted_state_bytes"] = plan.totals.state_bytes_by_rank[rank % len(plan.totals.state_bytes_by_rank)]
    if kind == "zero2":
        report["grad_bytes"] = sorted(grads_seen)  # one figure: the same after every backward
        report["predicted_grad_bytes"] = plan.totals.grads_bytes_by_rank[rank]
        report["largest_rank_grad_bytes"] = plan.totals.grads_bytes_per_rank
        report["grad_bytes_whole"] = plan.totals.grads_bytes  # one copy of every gradient
        report["foreign_grads"] = sorted(foreign)
    if bf16:
        from sketchplan.optimizers.torch.base import MASTER_KEY

        report["master_bytes"] = sum(s[MASTER_KEY].nbytes for s in opt.state.values() if MASTER_KEY in s)
        by_rank = plan.totals.master_bytes_by_rank
        report["predicted_master_bytes"] = by_rank[rank] if by_rank else plan.totals.master_bytes_per_rank
    report["single_device_state_bytes"] = plan_from_configs(meta, cfg, opts).totals.state_bytes
    # ranks in sync: every rank's full parameters equal rank 0's bit for bit
    flat = torch.cat([t.reshape(-1) for t in full.values()])
    ref0 = flat.clone()
    dist.broadcast(ref0, 0)
    report["in_sync"] = bool(torch.equal(flat, ref0))
    if bf16:  # the fp32 masters, broadcast from their owners, against the reference written here
        masters = gather_masters(opt, m, owner, kind, rank)
    if rank == 0 and bf16:
        if base == "adam":  # early: to float32 tolerance; at the end: within a few learning rates (see above)
            ref5 = bf16_reference(world, steps=BF16_TIGHT_STEPS, lr=opts.lr, betas=opts.betas, eps=opts.eps)
            report["early_max_abs_err"] = max(float((early[n] - ref5[n]).abs().max()) for n in ref5)
            ref = bf16_reference(world, lr=opts.lr, betas=opts.betas, eps=opts.eps)
        else:
            ref = bf16_single(cfg, opts, world)
        errs = {n: float((masters[n] - ref[n]).abs().max()) for n in ref}
        report["max_abs_err"] = max(errs.values())
        report["worst"] = max(errs, key=errs.get)
        report["moved"] = max(float((masters[n] - model().state_dict()[n]).abs().max()) for n in ref)
        report["rounded"] = all(torch.equal(full[n], masters[n].to(torch.bfloat16)) for n in ref)
    elif rank == 0:
        ref = reference(cfg, opts, group or world, kind in ("fsdp", "hsdp"))
        errs = {n: float((full[n] - ref[n]).abs().max() / (ref[n].abs().max() + 1e-12)) for n in ref}
        report["max_rel_err"] = max(errs.values())
        report["worst"] = max(errs, key=errs.get)
        moved = max(float((full[n] - model().state_dict()[n]).abs().max()) for n in ref)
        report["moved"] = moved
    if ckpt_dir:
        report["final"] = {n: t.tolist() for n, t in full.items()}
        # resume from step 10 in a fresh model and optimizer: steps 11..20 must give the same parameters
        from sketchplan.checkpoint import load

        m2 = model(seed=99).to(torch.bfloat16) if bf16 else model(seed=99)
        if kind in ("fsdp", "hsdp"):
            for b in m2.layers:
                fully_shard(b)
            fully_shard(m2)
            w2 = m2
        elif kind == "zero2":
            w2 = m2
        else:
            w2 = DDP(m2)
            # DDP reduces the first iteration's gradients in its initial bucket order (reverse registration) and
            # rebuilds the buckets in backward's ready order for the next: the original run reduced steps 11-20
            # in the rebuilt order, and a 4-rank gloo ring sums another order with other rounding. One throwaway
            # forward and backward before loading lets the resumed DDP rebuild its buckets as the original did
            # (the gradients are discarded; the checkpoint then sets parameters and state).
            loss_of(w2, data[0][rank * per:(rank + 1) * per]).backward()
            m2.zero_grad(set_to_none=True)
        opt2 = sketchplan.build_optimizer(plan, w2)
        load(opt2, w2, ckpt_dir)
        for batch in data[10:]:
            opt2.zero_grad()
            loss_of(w2, batch[rank * per:(rank + 1) * per]).backward()
            opt2.step()
        full2 = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for n, p in m2.named_parameters()}
        report["resume_bitexact"] = all(torch.equal(full[n], full2[n]) for n in full)
        del report["final"]
    return report


def worker(rank: int, world: int, port: int, scenarios: list, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # a bounded timeout: a rank that dies must not leave the others waiting in a collective (default 30 min)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    reports = []
    try:
        for kind, method, ckpt in scenarios:
            try:
                ckpt_dir = os.path.join(out_dir, f"ckpt-{kind}-{method}") if ckpt is True else None
                if ckpt == "check":
                    reports.append(run_check(rank, world, kind, method))
                else:
                    reports.append(run_scenario(rank, world, kind, method, out_dir, ckpt_dir))
            except Exception:  # noqa: BLE001 - reported to the test, which fails with the traceback
                reports.append({"kind": kind, "method": method, "rank": rank, "error": traceback.format_exc()})
            dist.barrier()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(reports, f)
        dist.destroy_process_group()


def spawn(world: int, scenarios: list, out_dir: str) -> list[list[dict]]:
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(world, free_port(), scenarios, out_dir), nprocs=world, join=True)
    out = []
    for r in range(world):
        with open(os.path.join(out_dir, f"rank{r}.json")) as f:
            out.append(json.load(f))
    return out
