"""``check`` with measurement: what the planned optimizer really allocates (``sketchplan check --measure``).

``check(plan, model, measure=True)`` runs the planner's static check (``planner.check``) and hands it
``measure_plan`` as its measurer. This module sits above the planner and ``build``: it builds the real torch
optimizer, which the planner never imports.

When the whole model fits in ``limit`` bytes on the device (parameters, gradients, predicted state and
workspace), the meta-built model is materialised with random weights, ``build_optimizer(plan, model)`` is
called, every trainable tensor gets a random gradient and the optimizer steps (state is allocated on the first
step, so one suffices); the bytes of every
state tensor it holds are then summed per parameter. Otherwise a sample is measured instead, and the report
says so: one parameter of each distinct (shape, dtype, configuration), largest first while they fit, each
stepped by its own optimizer with the plan's options. Random data, never zeros.
"""

from __future__ import annotations

import os
from functools import partial

from .errors import UserError, require
from .methods import state_layout, total_bytes, workspace_bytes
from .methods.layout import MethodConfig
from .planner.analysis import ModelSpec, is_torch_module
from .planner.check import CheckReport, Measurement, MeasuredTensor
from .planner.check import check as static_check
from .planner.plan import Plan


def check(plan: Plan, model, *, plan_path: str = "plan", tolerance_pct: float = 0.0, budget: int | None = None,
          measure: bool = False, device: str = "cpu", measure_limit: int | None = None,
          source: str | None = None) -> CheckReport:
    """Compare ``plan`` with today's ``model`` (``planner.check``); with ``measure``, also build the planned
    optimizer on ``device``, step it and compare the allocated state bytes with the plan's, tensor by tensor.
    ``source`` names where ``model`` came from (default: the plan's recorded source)."""
    measurer = partial(measure_plan, device=device, limit=measure_limit) if measure else None
    return static_check(plan, model, plan_path=plan_path, tolerance_pct=tolerance_pct, budget=budget,
                        measurer=measurer, source=source)


def _device_limit(device) -> int:
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 * 2**30
    return int(avail * 0.5)


def materialise(model, device):
    """``model.to_empty(device)`` that keeps tied parameters tied (``to_empty`` gives each name its own tensor)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    model = model.to_empty(device=device)
    for names in groups.values():
        if len(names) > 1:
            canonical = model.get_parameter(names[0])
            for alias in names[1:]:
                owner, _, leaf = alias.rpartition(".")
                setattr(model.get_submodule(owner) if owner else model, leaf, canonical)
    return model


def _state_bytes(opt, p) -> int:
    from .optimizers.torch.base import method_state_bytes

    return method_state_bytes(opt.state[p])  # the master copy is counted as master weights, not state


def _randomise(params, gen_device) -> None:
    import torch

    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, device=gen_device, dtype=torch.float32).mul_(0.02).to(p.dtype))


def _grads(params) -> None:
    import torch

    for p in params:
        if p.requires_grad:
            p.grad = torch.randn(p.shape, device=p.device, dtype=torch.float32).mul_(1e-2).to(p.dtype)


def _peak_tracker(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return lambda: (torch.cuda.synchronize(device), torch.cuda.max_memory_allocated(device))[1]
    return lambda: None


def _tracked_step(model, opt, device) -> int | None:
    """One optimizer step; on CPU under torch's ``MemTracker`` (parameters, buffers, gradients, state and every
    tensor the step creates), returning its peak bytes. On CUDA ``max_memory_allocated`` is read instead."""
    if device.type != "cpu":
        opt.step()
        return None
    from torch.distributed._tools.mem_tracker import MemTracker

    mt = MemTracker()
    mt.track_external(model, opt)
    with mt:
        opt.step()
    return sum(s["Total"] for s in mt.get_tracker_snapshot("peak").values())


def measure_plan(plan: Plan, model, spec: ModelSpec, configs: dict[str, MethodConfig], *, device: str = "cpu",
                 limit: int | None = None, steps: int = 1) -> Measurement:
    if plan.settings.mesh is not None:
        return measure_mesh(plan, model, spec, configs, steps=steps)
    torch = require("torch", "check --measure")
    import torch.nn as nn

    from .build import build_optimizer
    from .optimizers.torch import SketchplanOptimizer, group_options

    try:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for CUDA but torch sees no CUDA device; use --device cpu.")
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device; use cpu or cuda[:i].") from None
    if plan.settings.world_size > 1:
        return _measure_ranks(plan, model, configs, dev, steps)
    limit = limit if limit is not None else _device_limit(dev)
    shapes = {p.name: p for p in spec.params}
    opts = plan.defaults
    need = sum(p.nbytes * (2 if p.trainable else 1) for p in spec.params)
    need += sum(total_bytes(state_layout(shapes[n].shape, c, opts)) for n, c in configs.items())
    need += max((workspace_bytes(shapes[n].shape, c, opts) for n, c in configs.items()), default=0)

    def predicted(name: str, cfg: MethodConfig) -> int:
        return total_bytes(state_layout(shapes[name].shape, cfg, opts))

    if is_torch_module(model) and need <= limit:
        model = materialise(model, dev)
        params = [p for p in model.parameters()]
        _randomise(params, dev)
        opt = build_optimizer(plan, model)
        peak = _peak_tracker(dev)
        cpu_peak = 0
        for _ in range(steps):
            _grads(params)
            cpu_peak = max(cpu_peak, _tracked_step(model, opt, dev) or 0)
        peak_bytes = peak() if dev.type == "cuda" else cpu_peak
        named = dict(model.named_parameters())
        rows = [MeasuredTensor(name=n, predicted_bytes=predicted(n, c), measured_bytes=_state_bytes(opt, named[n]),
                               method=c.label()) for n, c in configs.items()]
        note = f"whole model materialised on {dev} with random weights; {steps} steps"
        mode = "materialised"
    else:
        seen: dict[tuple, str] = {}
        for n, c in configs.items():
            p = shapes[n]
            seen.setdefault((p.shape, p.dtype, c), n)
        order = sorted(seen.items(), key=lambda kv: -total_bytes(state_layout(kv[0][0], kv[0][2], opts)))
        rows, used, skipped = [], 0, 0
        peak_bytes = None
        for (shape, dtype, cfg), name in order:
            cost = shapes[name].nbytes * 2 + total_bytes(state_layout(shape, cfg, opts)) + \
                workspace_bytes(shape, cfg, opts)
            if used + cost > limit:
                skipped += 1
                continue
            p = nn.Parameter(torch.empty(shape, device=dev, dtype=getattr(torch, dtype)))
            _randomise([p], dev)
            opt = SketchplanOptimizer([{"params": [p], **group_options(cfg, opts)}], cfg, opts)
            for _ in range(steps):
                _grads([p])
                opt.step()
            rows.append(MeasuredTensor(name=name, predicted_bytes=predicted(name, cfg),
                                       measured_bytes=_state_bytes(opt, p), method=cfg.label()))
            del opt, p
        why = "the model is not a torch module" if not is_torch_module(model) else \
            f"the model needs {need:,} bytes, above the {limit:,}-byte measuring limit"
        note = (f"sampled: {len(rows)} of {len(seen)} distinct (shape, dtype, configuration) measured on {dev} "
                f"because {why}" + (f"; {skipped} too large to measure" if skipped else ""))
        mode = "sampled"
    return Measurement(device=str(dev), mode=mode, note=note, tensors=rows,
                       predicted_state_bytes=sum(r.predicted_bytes for r in rows),
                       measured_state_bytes=sum(r.measured_bytes for r in rows),
                       peak_allocated_bytes=peak_bytes, predicted_peak_bytes=plan.totals.peak_bytes)


def measure_rank(optimizer, model, plan: Plan) -> dict:
    """This rank's allocated optimizer state against the plan's per-rank prediction, tensor by tensor (call it
    inside a multi-process run, after the first ``step()`` or ``optimizer.allocate_state()``).

    Returns ``{"rank", "world_size", "parallelism", "predicted_bytes", "measured_bytes", "tensors": [{"name",
    "predicted_bytes", "measured_bytes"}]}``; the prediction of a tensor is its method's layout cut to this rank's
    blocks and element-wise owner (DDP/ZeRO) or of its local shard (FSDP/HSDP), ``methods.placement``.
    """
    require("torch", "measure_rank")
    import torch.distributed as dist

    from .build import _unwrap
    from .methods.placement import local_layout, local_shape, owned_by_group
    from .planner.parallel import from_settings

    par = from_settings(plan.settings)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    entries = {}
    for e in plan.tensors:
        for n in [e.name, *e.tied]:
            entries[n] = e
    rows = []
    for name, p in _unwrap(model).named_parameters():
        e = entries.get(name)
        cfg = e.config() if e is not None else None
        if cfg is None or not p.requires_grad:
            continue
        layout = state_layout(tuple(e.shape), cfg, plan.defaults)
        if par.sharded:
            shape = local_shape(tuple(e.shape), par.shards, rank % par.shards)
            layout = state_layout(shape, cfg, plan.defaults) if all(shape) else []
        elif par.owner:
            keep = par.kind == "ddp" or e.owner == rank
            matrix = bool(e.owners)
            layout = local_layout(layout, owned_by_group(e.owners or [], layout, rank), keep)
            if not keep and not matrix:
                layout = []
        from .optimizers.torch.base import method_state_bytes

        measured = method_state_bytes(optimizer.state.get(p, {}))
        rows.append({"name": name, "predicted_bytes": total_bytes(layout), "measured_bytes": measured})
    by_rank = plan.totals.state_bytes_by_rank
    return {"rank": rank, "world_size": par.world, "parallelism": par.kind,
            "predicted_bytes": by_rank[rank % len(by_rank)] if by_rank else plan.totals.state_bytes,
            "measured_bytes": sum(r["measured_bytes"] for r in rows), "tensors": rows}


def _measure_ranks(plan: Plan, model, configs: dict[str, MethodConfig], dev, steps: int) -> Measurement:
    """``check --measure`` of a multi-rank plan, run on every rank (``torchrun --nproc-per-node N -m sketchplan
    check PLAN --measure``): the model is materialised (same seed on every rank), wrapped as the plan says (DDP, or
    ``fully_shard`` per unit then the root), the planned optimizer steps, and this rank's state is compared with
    the plan's per-rank prediction (``measure_rank``)."""
    import torch
    import torch.distributed as dist

    from .build import build_optimizer
    from .planner.parallel import from_settings, unit_of

    par = from_settings(plan.settings)
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")  # started by torchrun
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(dev)
    running = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if running != par.world:
        raise UserError(f"the plan is for {par.world} ranks ({par.kind}); measure it on that many with `torchrun "
                        f"--nproc-per-node {par.world} -m sketchplan check PLAN --measure`, or inside your run with "
                        "sketchplan.testing.assert_rank_matches_plan.")
    if not is_torch_module(model):
        raise UserError("check --measure of a multi-rank plan needs a torch model (a preset or package.module:factory).")
    model = materialise(model, dev)
    torch.manual_seed(0)
    _randomise(list(model.parameters()), dev)
    if par.sharded:
        from torch.distributed.fsdp import fully_shard

        units = {unit_of(n) for n, _ in model.named_parameters()} - {""}
        for name, mod in model.named_modules():
            if name in units:
                fully_shard(mod)
        fully_shard(model)
        wrapped = model
    elif par.kind == "zero2":
        wrapped = model  # the optimizer reduces the gradients itself (optimizers.torch.distributed)
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    opt = build_optimizer(plan, wrapped)
    for _ in range(steps):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.randn_like(p).mul_(1e-2)
        opt.step()
    m = measure_rank(opt, wrapped, plan)
    rows = [MeasuredTensor(name=t["name"], predicted_bytes=t["predicted_bytes"], measured_bytes=t["measured_bytes"],
                           method=configs[t["name"]].label()) for t in m["tensors"] if t["name"] in configs]
    return Measurement(device=str(dev), mode="materialised",
                       note=f"rank {m['rank']} of {par.world} ({par.kind}); whole model materialised with random "
                            f"weights; {steps} steps", tensors=rows,
                       predicted_state_bytes=sum(r.predicted_bytes for r in rows),
                       measured_state_bytes=sum(r.measured_bytes for r in rows),
                       predicted_peak_bytes=plan.totals.peak_bytes)


def measure_mesh(plan: Plan, model, spec: ModelSpec, configs: dict[str, MethodConfig], *, steps: int = 1,
                 seed: int = 0) -> Measurement:
    """``check --measure`` of a plan made for a JAX mesh: the mesh is made from this process's devices (explicit
    axes, ``jax.set_mesh``), every parameter is a random array placed by the plan's spec, ``build_optax(plan,
    params)`` is initialised and stepped, and the bytes each device holds of the state (``addressable_shards``)
    are compared with the plan's ``state_bytes_by_device``; per tensor, the device holding most against
    ``device_state_bytes``. A shapes file's tensors keep its order (an ``OrderedDict``: the plan's fingerprint
    is over that order)."""
    jax = require("jax", "check --measure of a mesh plan")
    require("optax", "check --measure of a mesh plan")
    from collections import OrderedDict

    import jax.numpy as jnp
    import optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from .build import _aliases, build_optax
    from .optimizers.jax.placement import measured_device_bytes
    from .optimizers.jax.transform import SketchplanState, named_leaves
    from .planner.mesh import devices, mesh_label, plan_mesh, plan_specs

    sizes = plan_mesh(plan)
    n = devices(sizes)
    if jax.device_count() != n:
        raise UserError(f"the plan is for mesh {mesh_label(sizes)} ({n} devices) but JAX sees {jax.device_count()} "
                        f"{jax.default_backend()} device(s); measure it where there are {n} (on CPU: "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count={n}).")
    if is_torch_module(model):
        raise UserError("a mesh plan builds an optax transformation; give check a JAX model (package.module:factory "
                        "returning a pytree) or a shapes file.")
    if isinstance(model, ModelSpec):
        tree = OrderedDict((p.name, jax.ShapeDtypeStruct(p.shape, jnp.dtype(p.dtype))) for p in spec.params)
    else:
        tree = model
    mesh = jax.make_mesh(tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Explicit,) * len(sizes))
    specs = plan_specs(plan)
    named, treedef = named_leaves(tree)
    key = jax.random.key(seed)

    def rand(i, name, leaf):
        x = jax.random.normal(jax.random.fold_in(key, i), tuple(leaf.shape), jnp.float32) * 0.02
        return jax.device_put(x.astype(leaf.dtype), NamedSharding(mesh, PartitionSpec(*specs.get(name, ()))))

    params = treedef.unflatten([rand(i, n_, leaf) for i, (n_, leaf) in enumerate(named)])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    tx = build_optax(plan, abstract)
    with jax.sharding.set_mesh(mesh):
        state = tx.init(params)
        step = jax.jit(tx.update)
        for t in range(steps):
            grads = treedef.unflatten([rand(10_000 + 100 * t + i, n_, leaf) for i, (n_, leaf) in enumerate(named)])
            updates, state = step(grads, state, params)
            params = optax.apply_updates(params, updates)
        jax.block_until_ready(state)
    per_device = measured_device_bytes(state, mesh)
    sp = next(x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, SketchplanState))
              if isinstance(x, SketchplanState))
    mu, nu = jax.tree.leaves(sp.mu), jax.tree.leaves(sp.nu)
    entries = {a: e for e in plan.tensors for m in (e.name, *e.tied) for a in _aliases(m)}
    rows = []
    for i, (name, _) in enumerate(named):
        e = entries.get(name)
        if e is None or e.name not in configs:
            continue
        arrays = [mu[i], nu[i], *sp.factors[i].values()]
        rows.append(MeasuredTensor(name=e.name, predicted_bytes=e.device_state_bytes or 0,
                                   measured_bytes=max(measured_device_bytes(arrays, mesh)),
                                   method=configs[e.name].label()))
    predicted = list(plan.totals.state_bytes_by_device or [])
    return Measurement(device=f"mesh {mesh_label(sizes)} ({n} {jax.default_backend()} devices)", mode="materialised",
                       note=f"parameters placed by the plan's specs on explicit axes, random values; build_optax "
                            f"state after {steps} step(s), each device's bytes from addressable_shards; per tensor the "
                            "device holding most", tensors=rows,
                       predicted_state_bytes=max(predicted, default=0), measured_state_bytes=max(per_device),
                       predicted_device_bytes=predicted, measured_device_bytes=per_device,
                       predicted_peak_bytes=plan.totals.peak_bytes)
