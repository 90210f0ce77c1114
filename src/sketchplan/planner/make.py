"""``make_plan``: from a model and a budget to a ``Plan`` (the planner's whole pipeline, no I/O).

analyse → group identical trainable shapes → evaluate candidates per distinct shape (exact bytes from the
optimizers' layouts) → solve the knapsack → one entry per tensor, totals, what-if alternatives.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
from collections import OrderedDict
from dataclasses import dataclass

from .. import __version__
from ..errors import UserError
from ..methods import state_layout
from ..methods import muon  # issue 19 part A: the what-if "all muon" keeps AdamW where its authors do
from ..methods.layout import MATRIX_METHODS, MethodConfig, OptimizerDefaults
from ..profiles.cost import CostModel
from ..profiles.registry import label as profile_label
from ..profiles.registry import resolve as resolve_profile
from . import candidates as cand
from .analysis import ModelSpec, ParamSpec, analyze, check_spec
from .memory import FixedBytes, Precision, fixed_bytes, step_peak
from . import parallel as par_
from . import structure, time_bound
from .plan import (ActivationInfo, Budget, CandidateGrid, ModelInfo, Plan, Settings, SolverInfo, TensorEntry,
                   Totals, WhatIf)
from .sizes import fmt_bytes, fmt_pair, parse_size
from .solve import TOL, Infeasible, Item
from .solve import solve as solve_memory
from .solve_time import InfeasibleTime, solve_two, total_time
from .solve_time import binding as bind_report
from .timing import StepTimer
from .time_bound import DEFAULT_MAX_STEP_VS_ADAM


@dataclass
class _Group:
    shape: tuple[int, ...]
    params: list[ParamSpec]
    cands: list[cand.Candidate]


def _groups(spec: ModelSpec, configs: list[MethodConfig], opts: OptimizerDefaults, spectra=None,
            timer=None, mesh: dict[str, int] | None = None) -> list[_Group]:
    """Tensors of one shape share their candidates, except probed ones: each has its own measured spectrum. On a
    mesh, tensors of one shape and one partition spec: candidates weigh the largest device's bytes."""
    from .mesh import largest_tensor_bytes

    spectra = spectra or {}
    by_key: OrderedDict[tuple, list[ParamSpec]] = OrderedDict()
    for p in spec.trainable:
        key = (p.shape, p.name if p.name in spectra else None, p.batch_dims, p.splits, p.split_axis,
               p.spec if mesh else None)
        by_key.setdefault(key, []).append(p)
    out = []
    for (shape, name, *_), ps in by_key.items():
        own = [c for c in (structure.structured(cfg, ps[0]) for cfg in configs) if c is not None]
        per_device = None if mesh is None else \
            (lambda cfg, shape=shape, s=ps[0].spec or (): largest_tensor_bytes(shape, cfg, opts, s, mesh))
        out.append(_Group(shape, ps, cand.candidates_for(shape, own, opts, spectra.get(name), timer, per_device)))
    return out


def _exclusions(spec: ModelSpec) -> dict[str, str]:
    """Trainable tensors sketchplan gives no optimizer, and why (recorded in their plan entries)."""
    return {p.name: f"complex dtype {p.dtype}: sketchplan's optimizers update real tensors only; give this tensor "
                    "its own optimizer (its parameter and gradient bytes are counted)"
            for p in spec.trainable if p.dtype.startswith("complex")}


def _plannable(spec: ModelSpec, excluded: dict[str, str]) -> ModelSpec:
    """``spec`` with the excluded tensors treated as frozen (no candidates, no state, no score weight)."""
    if not excluded:
        return spec
    return ModelSpec(params=[dataclasses.replace(p, trainable=False) if p.name in excluded else p
                             for p in spec.params], buffers=spec.buffers, source=spec.source, mesh=spec.mesh)


def _validated(model, source: str) -> tuple[ModelSpec, dict[str, str], ModelSpec]:
    """The model's spec (checked: shapes and dtypes a device could hold, something to plan), its exclusions
    and the spec the solver sees."""
    spec = analyze(model, source=source)
    what = f"model {spec.source or source!r}" if (spec.source or source) else "the model"
    check_spec(spec, what)
    if not spec.params:
        raise UserError(f"{what} has no parameters, so there is no optimizer state to plan; check that it builds "
                        "its layers (a factory must return the model with its parameters).")
    excluded = _exclusions(spec)
    pspec = _plannable(spec, excluded)
    if not pspec.trainable:
        why = (f"all {len(spec.params)} parameter tensors are frozen (requires_grad=False)" if not excluded else
               f"its trainable tensors are all excluded ({next(iter(excluded.values())).split(':')[0]})")
        raise UserError(f"{what} has nothing to plan: {why}; make some parameters trainable.")
    return spec, excluded, pspec


def _entries(spec: ModelSpec, choice: dict[str, cand.Candidate],
             timer: StepTimer | None = None, excluded: dict[str, str] | None = None) -> list[TensorEntry]:
    out = []
    excluded = excluded or {}
    if timer is not None:  # the guard as the built optimizer resolves it
        timer = timer.for_methods({c.cfg.method for c in choice.values()})
    for p in spec.params:
        c = choice.get(p.name)
        e = TensorEntry(name=p.name, shape=list(p.shape), dtype=p.dtype, trainable=p.trainable, tied=list(p.tied),
                        excluded=excluded.get(p.name))
        if c is not None:
            e.method, e.rank, e.block_size = c.cfg.method, c.cfg.rank, c.cfg.block_size
            e.graft, e.momentum, e.compress = c.cfg.graft, c.cfg.momentum, c.cfg.compress
            e.batch_dims, e.split_axis = c.cfg.batch_dims, c.cfg.split_axis
            e.splits = list(c.cfg.splits) if c.cfg.splits else None
            e.packed = c.cfg.packed  # issue 19b
            e.state_bytes, e.workspace_bytes, e.score = c.state_bytes, c.workspace_bytes, round(c.score, 6)
            e.device_state_bytes = c.device_bytes
            if timer is not None:
                ms, picks = timer(p.shape, c.cfg)
                e.step_ms, e.variant = round(ms, 4), (dict(picks) or None)
        out.append(e)
    return out


@dataclass
class _Costs:
    state: int
    per_rank: int
    workspace: int
    score: float
    by_method: dict[str, int]
    ranks: par_.RankState | None = None
    tensor_workspace: int = 0
    by_device: list[int] | None = None  # on a mesh: each device's state, the step count included (planner.mesh)

    @property
    def extra(self) -> int:
        """Per-rank bytes besides the largest rank's state and the workspace: direction exchange buffers."""
        return self.ranks.exchange if self.ranks is not None else 0


def _costs(spec: ModelSpec, choice: dict[str, cand.Candidate], opts: OptimizerDefaults,
           par: par_.Parallel = par_.Parallel(), timer=None, param_dtype: str | None = None,
           prec: Precision | None = None) -> _Costs:
    """State (total and largest rank's), the optimizer step's transients (``planner.transients``, on each rank's
    local shapes), the weighted score and bytes by method of one choice per tensor."""
    from .transients import step_workspace

    state = sum(c.state_bytes for c in choice.values())
    ws, ws_tensors = step_workspace([(p.shape, p.dtype, choice[p.name].cfg, {})
                                     for p in par_.local_spec(spec, par).trainable], opts, param_dtype,
                                    bool(prec and prec.master_weights), par.owner)
    w = sum(p.numel for p in spec.trainable)
    score = sum(choice[p.name].score * p.numel for p in spec.trainable) / w if w else 1.0
    by_method: dict[str, int] = {}
    for c in choice.values():
        by_method[c.cfg.method] = by_method.get(c.cfg.method, 0) + c.state_bytes
    if par.mesh is not None:
        from .mesh import state_by_device

        by_dev = state_by_device([(p.shape, choice[p.name].cfg, opts, p.spec or ()) for p in spec.trainable],
                                 par.mesh_sizes)
        return _Costs(state, max(by_dev), ws, score, by_method, None, ws_tensors, by_dev)
    if par.world == 1:
        return _Costs(state, state, ws, score, by_method, None, ws_tensors)
    rs = par_.rank_state(spec, {n: c.cfg for n, c in choice.items()}, opts, par, timer,
                         prec=prec or Precision(param_dtype))
    if par.sharded:
        state = sum(rs.by_rank)
    return _Costs(state, rs.largest, ws, score, by_method, rs, ws_tensors)


def _owned(fixed, spec: ModelSpec, prec: Precision | None, par: par_.Parallel, c: _Costs):
    """ZeRO: the fixed per-rank bytes with the master copies (and ZeRO-2 gradients) of the owner assignment ``c``
    made, in place of the bound used before it (``parallel.fixed_per_rank``)."""
    if not (par.owner and par.kind != "ddp" and c.ranks is not None and prec is not None):
        return fixed
    return par_.fixed_per_rank(spec, prec, par, c.ranks)


def _what_ifs(spec, opts, fixed, avail, par, ranks, block_sizes, timer=None, cand_spec=None, act=None,
              param_dtype=None, ret=0, prec: Precision | None = None) -> list[WhatIf]:
    cand_spec = cand_spec or spec
    alts = [MethodConfig(method="adam"), MethodConfig(method="shampoo")]
    alts += [MethodConfig(method="blocked_shampoo", block_size=b) for b in block_sizes]
    alts += [MethodConfig(method="sketchy", rank=k, graft="adafactor", momentum="bfloat16") for k in ranks]
    # issue 19b: SOAP, and Shampoo with packed factors
    alts += [MethodConfig(method="soap"), MethodConfig(method="shampoo", packed=True)]
    # issue 19 part A: what the user would otherwise run, and 8-bit Adam
    alts += [MethodConfig(method="adam", momentum="int8", compress="int8"), MethodConfig(method="adafactor",
             momentum="none"), MethodConfig(method="lion"), MethodConfig(method="muon")]
    out = []
    cache: dict[tuple, cand.Candidate] = {}
    for cfg in alts:
        if par.owner and owner_unsupported(cfg):
            continue  # issue 19b: not run by the DDP/ZeRO placement
        if not all(cand.offered(p.shape, cfg, opts) for p in cand_spec.trainable):
            continue  # no device runs it (candidates.MAX_BLOCKS_PER_AXIS)
        choice = {}
        for p in cand_spec.trainable:
            own = structure.structured(cfg, p) or (muon.adam_config(cfg) if cfg.method == "muon" else cfg)
            key = (p.shape, own)
            if key not in cache:
                cache[key] = cand.evaluate(p.shape, own, opts)
            choice[p.name] = cache[key]
        c = _costs(spec, choice, opts, par, timer, param_dtype, prec)
        peak = step_peak(_owned(fixed, spec, prec, par, c), c.per_rank + c.extra, c.workspace, spec.buffers_bytes,
                         act, ret)
        run = None if timer is None else timer.for_methods({c.cfg.method for c in choice.values()})
        ms = None if run is None else round(sum(run(p.shape, choice[p.name].cfg)[0] for p in cand_spec.trainable), 3)
        out.append(WhatIf(label="all " + cfg.label(), state_bytes=c.state, peak_bytes=peak,
                          fits=avail is None or peak <= avail, score=round(c.score, 6), step_ms=ms))
    return out


def _assemble(spec, choice, opts, fixed, budget, prec, par, solver, ranks, block_sizes, hardware,
              grid: CandidateGrid | None = None, excluded: dict[str, str] | None = None,
              tokens_per_step: int | None = None, activations: ActivationInfo | None = None) -> Plan:
    from .transients import step_workspace

    pspec = _plannable(spec, excluded or {})
    profile = resolve_profile(hardware)
    timer = None if profile is None else StepTimer(CostModel(profile), opts)
    c = _costs(pspec, choice, opts, par, timer, prec.param_dtype, prec)
    fixed = _owned(fixed, spec, prec, par, c)
    cand_spec = par_.local_spec(pspec, par)
    entries = _entries(par_.local_spec(spec, par), choice, timer, excluded)
    for e, p in zip(entries, spec.params):
        e.shape = list(p.shape)  # the global shape; under FSDP the bytes and blocks are the local shard's
        if c.ranks is not None and p.name in c.ranks.owners:
            e.owners = c.ranks.owners[p.name]
        if c.ranks is not None and p.name in c.ranks.rest_owner:
            e.owner = c.ranks.rest_owner[p.name]
        if par.mesh is not None:
            e.spec = [list(x) if isinstance(x, tuple) else x for x in (p.spec or ())]
    step_ms = None if timer is None else round(sum(e.step_ms or 0.0 for e in entries), 3)
    avail = budget.available()
    local = {p.name: p.shape for p in par_.local_spec(spec, par).params}
    ws, ws_tensors = step_workspace([(local[e.name], e.dtype, e.config(), e.options()) for e in entries
                                     if e.method is not None], opts, prec.param_dtype, prec.master_weights,
                                    par.owner)
    act = None if activations is None or activations.source != "fake-tensor trace" else activations.peak_bytes
    ret = 0 if act is None else activations.retained_bytes
    totals = Totals(
        params_bytes=fixed.params, grads_bytes=fixed.grads, master_bytes=fixed.master, state_bytes=c.state,
        state_bytes_per_rank=c.per_rank if par.world > 1 else None, workspace_bytes=ws,
        kernel_scratch_bytes=ws - ws_tensors, buffers_bytes=spec.buffers_bytes, activation_bytes=act,
        peak_bytes=step_peak(fixed, c.per_rank + c.extra, ws, spec.buffers_bytes, act, ret),
        state_bytes_by_method=c.by_method,
        adam_step_ms=None if timer is None else round(time_bound.adam_step_ms(cand_spec, timer), 3),
        forward_backward_ms=None if profile is None else round(time_bound.forward_backward_ms(
            pspec.n_trainable, profile, tokens_per_step or time_bound.DEFAULT_TOKENS_PER_STEP), 3),
        tokens_per_step=None if profile is None else tokens_per_step or time_bound.DEFAULT_TOKENS_PER_STEP,
        step_ms=step_ms, score=round(c.score, 6),
    )
    if par.world > 1:
        par_.fill_totals(totals, spec, prec, par, c.ranks)
    if par.mesh is not None:
        totals.state_bytes_by_device = c.by_device
        totals.state_bytes_per_device = max(c.by_device)
        totals.params_bytes_per_device, totals.grads_bytes_per_device = fixed.params, fixed.grads
        totals.master_bytes_per_device = fixed.master
        whole = fixed_bytes(spec, prec)
        totals.params_bytes, totals.grads_bytes, totals.master_bytes = whole.params, whole.grads, whole.master
    return Plan(
        created_by=f"sketchplan {__version__}",
        model=ModelInfo(source=spec.source, fingerprint=spec.fingerprint, n_params=spec.n_params,
                        n_trainable=spec.n_trainable, n_tensors=len(spec.params), buffers_bytes=spec.buffers_bytes),
        hardware=None if profile is None else profile_label(profile),
        budget=budget,
        settings=Settings(param_dtype=prec.param_dtype, grad_dtype=prec.grad_dtype,
                          master_weights=prec.master_weights, world_size=par.world,
                          parallelism=par.kind, shard_group=par.shard_group, mesh=par.mesh_sizes),
        defaults=opts,
        grid=grid,
        tensors=entries,
        totals=totals,
        what_if=_what_ifs(pspec, opts, fixed, avail, par, ranks, block_sizes, timer, cand_spec, act,
                          prec.param_dtype, ret, prec),
        solver=solver,
        activations=activations,
    )


def _without_gc(fn):
    """Run ``fn`` with Python's cyclic garbage collector paused (restored after, whatever happens).

    Planning allocates ~10^6 short-lived objects and creates no reference cycles worth collecting, while the
    models, candidates and memos it builds stay alive: each automatic full collection walks all of them again
    (with the memos, ~30% of a GPT-2 plan's candidate evaluation). Nothing is leaked: cycles made meanwhile are
    collected by the next collection after the collector is back on.
    """
    @functools.wraps(fn)
    def run(*args, **kwargs):
        was_on = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_on:
                gc.enable()

    return run


@_without_gc
def make_plan(model, memory_budget=None, *, source: str = "", methods=cand.DEFAULT_METHODS,
              ranks=cand.DEFAULT_RANKS, block_sizes=cand.DEFAULT_BLOCK_SIZES, grafts=cand.DEFAULT_GRAFTS,
              momenta=cand.DEFAULT_MOMENTA, compress=cand.DEFAULT_COMPRESS, defaults: OptimizerDefaults | None = None, reserve=0,
              world_size: int = 1, shard_optimizer_state: bool = False, param_dtype: str | None = None,
              grad_dtype: str | None = None, master_weights: bool = False, hardware=None,
              spectrum=None, time_budget_ms: float | None = None, parallelism: str | None = None,
              max_step_vs_adam: float | None = DEFAULT_MAX_STEP_VS_ADAM, tokens_per_step: int | None = None,
              activations=None, example_inputs=None, headroom: float | None = None,
              shard_group: int | None = None, mesh=None, partition_specs=None) -> Plan:
    """Choose one candidate per trainable tensor maximising the parameter-weighted score within the budget.

    ``model``: an ``nn.Module`` (meta device is fine) or a ``ModelSpec``. ``memory_budget``: bytes or a size
    string (``"24GiB"``); None plans without a memory limit (each tensor's best candidate). ``reserve``:
    bytes kept free for activations. ``spectrum``: a ``SpectrumFile`` (or its path) from ``sketchplan probe``;
    probed tensors are scored by their measured spectra. ``hardware``: ``"auto"``, a shipped profile name, a
    profile file or a ``HardwareProfile``; with one, every entry gets its predicted ``step_ms`` and fastest kernel
    ``variant`` (``planner.timing``) and the totals the step time; None predicts no times.
    ``time_budget_ms``: the amortised optimizer step time allowed (predicted with ``hardware``, ``auto`` when
    None); the solver then honours both budgets (``planner.solve_time``) and reports which binds and what
    relaxing it would buy. ``world_size`` and ``parallelism`` (``ddp``, ``zero1``, ``zero2``, ``fsdp``,
    ``hsdp`` with ``shard_group``; ``shard_optimizer_state`` is an alias of ``zero1``): the budget is per rank and
    the totals carry per-rank figures (``planner.parallel``). ``mesh``: a JAX device mesh (a ``jax.sharding.Mesh``
    or axis sizes ``{"data": 4, "model": 2}``) with ``partition_specs`` (a mapping name → spec, or a pytree of
    ``PartitionSpec`` shaped like the params; default: the specs of sharded leaves, else replicated): the budget is
    per device, candidates are weighed by the largest device's bytes and the plan records the mesh, each tensor's
    spec and per-device bytes (``planner.mesh``). ``max_step_vs_adam``: without ``time_budget_ms``
    but with ``hardware``, the time budget is this multiple of all-Adam's predicted step (the default bound,
    ``planner.time_bound``; None or ``inf``: no bound), raised to a quarter of the predicted forward+backward when
    ``tokens_per_step`` is given. The bound applied and where it came from are written to ``plan.budget``.
    ``example_inputs``: a callable returning the inputs of one training batch (a dict of keyword arguments, a
    tuple of positional ones, or one tensor); the forward and backward are traced with fake tensors
    (``planner.activations``) and the budget then covers the whole training step. ``activations``: an
    ``ActivationInfo`` traced before (``planner.activations.trace_activations``). ``headroom``: the fraction of
    the budget left to the allocator (default ``planner.activations.DEFAULT_HEADROOM`` with traced activations,
    0 without). Raises ``UserError`` when no plan fits, naming
    the minimum.
    """
    opts = defaults or OptimizerDefaults()
    spec, excluded, pspec = _validated(model, source)
    spec.params = structure.annotate(spec.params)  # by name where no module told (shapes files, pytrees)
    from ..validate import MAX_WORLD_SIZE, number

    world_size = number(world_size, "world size", lo=1, hi=MAX_WORLD_SIZE, integer=True)
    par = par_.parallel(parallelism, world_size, shard_group, shard_optimizer_state, mesh)
    _place(spec, par, partition_specs)
    pspec = _plannable(spec, excluded)
    prec = Precision(param_dtype, grad_dtype, master_weights)
    if time_budget_ms is not None:
        time_budget_ms = number(time_budget_ms, "time budget (ms)", lo=0, lo_open=True, example="500")
    cand_spec = par_.local_spec(pspec, par)
    budget_bytes = None if memory_budget is None else parse_size(memory_budget, "memory budget")
    reserve_bytes = parse_size(reserve, "reserve")
    if example_inputs is not None and activations is None:
        from .activations import trace_activations

        activations = trace_activations(model, example_inputs)
    act = activations.peak_bytes if activations is not None and activations.source == "fake-tensor trace" else None
    if activations is None and reserve_bytes:
        activations = ActivationInfo(source="reserve", peak_bytes=reserve_bytes)  # a guess, kept out of the peak
    if headroom is None:
        from .activations import DEFAULT_HEADROOM

        headroom = DEFAULT_HEADROOM if act is not None else 0.0
    if not 0 <= headroom < 1:
        raise UserError(f"headroom {headroom:g} must be a fraction in [0, 1), e.g. --headroom 0.1.")
    budget = Budget(memory_bytes=budget_bytes, reserve_bytes=reserve_bytes, headroom=headroom)
    configs = cand.candidate_configs(tuple(methods), tuple(ranks), tuple(block_sizes), tuple(grafts), tuple(momenta),
                                     tuple(compress))
    if par.owner:  # issue 19b: the DDP/ZeRO block placement runs neither SOAP nor packed factors yet
        configs = [c for c in configs if not owner_unsupported(c)] or [cand.ADAM]
    if par.world > 1 and any(c.compress != "none" or c.momentum == "int8" for c in configs):  # issue 19 part A
        raise UserError("compressed optimizer state (--compress bfloat16/int8, int8 --momenta) is single-process "
                        "only for now; leave them out with --world-size > 1.")
    if par.sharded and "muon" in methods:
        raise UserError("Muon orthogonalises whole matrices, which FSDP/HSDP shard across ranks; use "
                        "--parallelism ddp/zero1/zero2 or leave muon out of --methods.")
    if isinstance(spectrum, (str, bytes)) or hasattr(spectrum, "__fspath__"):
        from .spectrum import SpectrumFile

        spectrum = SpectrumFile.load(str(spectrum))
    if time_budget_ms is not None:
        hardware = "auto" if hardware is None else hardware
    timer = None if hardware is None else StepTimer(CostModel(resolve_profile(hardware)), opts)
    time_budget_ms, time_source = time_bound.choose(cand_spec, timer, time_budget_ms, max_step_vs_adam,
                                                    tokens_per_step)
    spectra = spectrum.tensors if spectrum is not None else None
    groups = _groups(cand_spec, configs, opts, spectra, timer, par.mesh_sizes)
    fixed = par_.fixed_per_rank(spec, prec, par)
    items = _items(groups, opts, par, timer is not None)
    shard = par.owner
    assign_timer = None if hardware is None else StepTimer(CostModel(resolve_profile(hardware)), opts)
    avail = budget.available()
    ret = activations.retained_bytes if act is not None else 0
    kept = fixed.total + spec.buffers_bytes + max(0, (act or 0) - fixed.grads, ret)
    if avail is not None and fixed.total > avail:
        raise UserError(_fixed_too_big(fixed, budget_bytes, reserve_bytes))
    if avail is not None and kept > avail:
        from .activations import too_big

        raise UserError(too_big(activations, kept, budget_bytes, headroom))
    state_budget = None if avail is None else (avail - kept) * par_.knapsack_scale(par)

    def solve(groups, items, assign_timer, time_budget_ms):
        """The solve under both budgets, the state budget lowered until the sharded peak fits. Raises
        ``InfeasibleTime``, or ``Infeasible`` tagged with the state budget it reached (``state_left``)."""
        state_left = state_budget
        for _ in range(50):
            try:
                sol = solve_two(items, state_left, time_budget_ms)
            except Infeasible as inf:
                inf.state_left = state_left  # lowered below the budget: the sharded blocks did not fit
                raise
            choice = _choice(groups, sol.assign)
            if avail is None:
                break
            c = _costs(pspec, choice, opts, par, assign_timer, param_dtype, prec)
            over = step_peak(_owned(fixed, spec, prec, par, c), c.per_rank + c.extra, c.workspace,
                             spec.buffers_bytes, act, ret) - avail
            if over <= 0:
                break
            state_left -= max(over, state_left // 200, 1)
        else:  # pragma: no cover - the loop shrinks the budget each round
            raise UserError("could not fit the sharded optimizer state; raise --memory-budget.")
        return groups, items, sol, choice, state_left

    # With ``nonfinite_guard: auto`` the guard's read is paid by every tensor of a plan that holds a matrix method
    # and by none of an all-elementwise plan: the candidates above are timed with it, and the all-elementwise plans
    # are solved again timed without it (``StepTimer.for_methods``); the better plan within the budgets wins.
    sets = [(groups, items, assign_timer)]
    if timer is not None and time_budget_ms is not None and opts.guard_runs(()) != opts.guard_runs(MATRIX_METHODS):
        flat_configs = [c for c in configs if c.method not in MATRIX_METHODS]
        if flat_configs:
            flat_groups = _groups(cand_spec, flat_configs, opts, spectra, timer.for_methods(()), par.mesh_sizes)
            sets.append((flat_groups, _items(flat_groups, opts, par, True), assign_timer.for_methods(())))

    def best_of(time_budget_ms):
        """The best feasible solve over the candidate sets, else the main set's exception (with the least step
        time any set can reach, when time is what failed)."""
        found, errors = [], []
        for g, it, at in sets:
            try:
                found.append(solve(g, it, at, time_budget_ms))
            except (Infeasible, InfeasibleTime) as exc:
                errors.append(exc)
        if found:
            return max(found, key=lambda f: f[2].value)  # (Σ score · numel over the same tensors in every set)
        timing = [e.min_ms for e in errors if isinstance(e, InfeasibleTime)]
        if timing and isinstance(errors[0], InfeasibleTime):
            raise InfeasibleTime(min(timing))
        raise errors[0]

    try:
        try:
            best = best_of(time_budget_ms)
        except InfeasibleTime as inf:
            if time_source == "--time-budget-ms":
                raise UserError(time_bound.infeasible_message(time_budget_ms, time_source, inf.min_ms)) from None
            # a default bound never makes a memory-feasible plan infeasible: it rises to the fastest plan that fits
            time_budget_ms = inf.min_ms * (1 + 1e-9)
            time_source += f"; raised to the fastest plan that fits the memory budget ({inf.min_ms:.4g} ms)"
            best = best_of(time_budget_ms)
    except Infeasible as inf:
        if shard and getattr(inf, "state_left", state_budget) < (avail - kept) * par_.knapsack_scale(par):
            raise UserError(f"with --world-size {world_size} no plan fits {fmt_bytes(avail)} per rank because "
                            "preconditioner blocks cannot be split across ranks; raise --memory-budget or use "
                            "smaller --block-sizes.") from None
        raise UserError(_infeasible(inf, groups, fixed, budget_bytes, reserve_bytes, par_.knapsack_scale(par),
                                    kept - fixed.total + int(budget_bytes * headroom))) from None
    main_items = items
    groups, items, sol, choice, state_left = best
    binding, relax = bind_report(items, state_left, time_budget_ms, sol)
    if items is not main_items and time_budget_ms is not None:
        # an all-elementwise plan won: relaxing the time budget readmits every candidate (guarded), not only the
        # elementwise ones its own items hold
        free = solve_memory(main_items, state_budget)
        if free.value > sol.value + TOL * max(1.0, abs(sol.value)) and free.value > relax.get("time", {}).get(
                "value", -math.inf):
            relax["time"] = {"value": free.value, "bytes": free.state_bytes + free.workspace_bytes,
                             "time_ms": total_time(main_items, free.assign)}
            binding = "memory and time" if binding and "memory" in binding else "time"
    state_budget = state_left
    n = max(1, cand_spec.n_trainable)  # the solver's scores are weighted by the (local) numel
    gap = sol.gap / n
    price = sol.extra.get("price", 0.0) * 2**30 / n if binding and "memory" in binding else 0.0
    price *= par_.knapsack_scale(par)  # per GiB of one rank's memory
    scale = par_.knapsack_scale(par)  # the solver's bytes are summed over the ranks (owner placement): ~ per rank
    relax_info = {k: {"score": round(v["value"] / n, 6), "peak_bytes": float(fixed.total + -(-v["bytes"] // scale)),
                      "step_ms": round(v["time_ms"], 3)} for k, v in relax.items()} or None
    # no solve time in the plan: a re-plan from the same inputs must be byte-identical (issue 18)
    info = SolverInfo(status=sol.status, gap=gap, binding=binding, price_per_gib=price, relax=relax_info)
    budget.time_budget_ms = time_budget_ms
    budget.time_budget_source = time_source
    grid = CandidateGrid(methods=list(methods), ranks=list(ranks), block_sizes=list(block_sizes),
                         grafts=list(grafts), momenta=list(momenta), compress=list(compress))
    return _assemble(spec, choice, opts, fixed, budget, prec, par, info, ranks, block_sizes, hardware, grid,
                     excluded, tokens_per_step, activations)


def uniform_plan(model, cfg: MethodConfig, defaults: OptimizerDefaults | None = None, *, source: str = "",
                 memory_budget=None, hardware=None) -> Plan:
    """A plan that gives every trainable tensor the same configuration (tests, what-ifs, baselines)."""
    return plan_from_configs(model, cfg, defaults, source=source, memory_budget=memory_budget, hardware=hardware)


def plan_from_configs(model, configs, defaults: OptimizerDefaults | None = None, *, source: str = "",
                      memory_budget=None, hardware=None, world_size: int = 1, parallelism: str | None = None,
                      shard_group: int | None = None, mesh=None, partition_specs=None,
                      master_weights: bool = False) -> Plan:
    """A plan with the given choice per tensor: ``configs`` is one ``MethodConfig`` for all trainable tensors, or a
    mapping name → ``MethodConfig`` (or a callable ``ParamSpec -> MethodConfig``). Bytes come from the layouts;
    with ``world_size``/``parallelism`` the per-rank placement too (``planner.parallel``), with ``mesh`` and
    ``partition_specs`` the per-device one (``planner.mesh``, as ``make_plan``); ``master_weights``: fp32 master
    copies of the model's 16-bit tensors."""
    opts = defaults or OptimizerDefaults()
    spec, excluded, pspec = _validated(model, source)
    par = par_.parallel(parallelism, world_size, shard_group, mesh=mesh)
    _place(spec, par, partition_specs)
    pspec = _plannable(spec, excluded)
    cand_spec = par_.local_spec(pspec, par)
    if isinstance(configs, MethodConfig):
        pick = lambda p: configs  # noqa: E731
    elif callable(configs):
        pick = configs
    else:
        missing = [p.name for p in pspec.trainable if p.name not in configs]
        if missing:
            raise UserError(f"no configuration given for tensor {missing[0]!r}.")
        pick = lambda p: configs[p.name]  # noqa: E731
    choice = {p.name: cand.evaluate(p.shape, structure.structured(pick(spec_p), p) or pick(spec_p), opts)
              for p, spec_p in zip(cand_spec.trainable, pspec.trainable)}
    if par.mesh is not None:
        from .mesh import largest_tensor_bytes

        choice = {p.name: dataclasses.replace(choice[p.name], device_bytes=largest_tensor_bytes(
            p.shape, choice[p.name].cfg, opts, p.spec or (), par.mesh_sizes)) for p in cand_spec.trainable}
    budget = Budget(memory_bytes=None if memory_budget is None else parse_size(memory_budget, "memory budget"))
    info = SolverInfo(status="exact", gap=0.0, binding=None)
    used = {c.cfg for c in choice.values()}
    ranks = tuple(sorted({c.rank for c in used if c.rank}))
    blocks = tuple(sorted({c.block_size for c in used if c.block_size}))
    prec = Precision(master_weights=master_weights)
    return _assemble(spec, choice, opts, par_.fixed_per_rank(spec, prec, par), budget, prec, par, info,
                     ranks, blocks, hardware, excluded=excluded)


def owner_unsupported(cfg: MethodConfig) -> bool:
    """Issue 19b: configurations the DDP/ZeRO owner placement (``optimizers.torch.distributed``) cannot run yet."""
    return cfg.method == "soap" or cfg.packed


def _place(spec: ModelSpec, par: par_.Parallel, partition_specs) -> None:
    """On a mesh, give every parameter its checked partition spec (``planner.mesh.resolve_specs``)."""
    if par.mesh is None:
        if partition_specs is not None:
            raise UserError("partition_specs say how parameters are split over a device mesh; give the mesh too "
                            "(mesh={'data': 4} or --mesh data=4).")
        return
    from .mesh import resolve_specs

    specs = resolve_specs(spec, par.mesh_sizes, partition_specs)
    spec.params = [dataclasses.replace(p, spec=specs[p.name]) for p in spec.params]


def _knapsack_bytes(shape, c: cand.Candidate, opts: OptimizerDefaults, par: par_.Parallel) -> int:
    if c.device_bytes is not None:
        return c.device_bytes
    if not (par.owner and par.kind == "ddp"):
        return c.state_bytes
    return par_.knapsack_bytes(c.state_bytes, par_.rest_bytes(state_layout(shape, c.cfg, opts)), par)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _items(groups: list[_Group], opts: OptimizerDefaults, par, timed: bool) -> list[Item]:
    """The solver's items: per group of same-shape tensors, each candidate's bytes, workspace, parameter-weighted
    score and (``timed``) predicted step time."""
    return [Item(len(g.params), [_knapsack_bytes(g.shape, c, opts, par) for c in g.cands],
                 [c.workspace_bytes for c in g.cands], [c.score * _numel(g.shape) for c in g.cands],
                 [c.time_ms for c in g.cands] if timed else None)
            for g in groups]


def _choice(groups: list[_Group], assign: list[dict[int, int]]) -> dict[str, cand.Candidate]:
    """Spread each group's counts over its tensors: better-scoring candidates to the tensors listed first."""
    choice = {}
    for g, a in zip(groups, assign):
        order = sorted(a.items(), key=lambda kv: -g.cands[kv[0]].score)
        names = iter(p.name for p in g.params)
        for ci, n in order:
            for _ in range(n):
                choice[next(names)] = g.cands[ci]
    return choice


def _fixed_too_big(fixed: FixedBytes, budget: int, reserve: int) -> str:
    what = f"parameters ({fmt_bytes(fixed.params)}) and gradients ({fmt_bytes(fixed.grads)})"
    if fixed.master:
        what += f" and master weights ({fmt_bytes(fixed.master)})"
    if getattr(fixed, "comm", 0):
        what += f" and communication buffers ({fmt_bytes(fixed.comm)})"
    have, need = fmt_pair(budget, fixed.total)
    return (f"memory budget {have}{f' minus reserve {fmt_bytes(reserve)}' if reserve else ''} is below "
            f"what {what} alone need ({need}); raise --memory-budget to at least "
            f"{fmt_bytes(fixed.total + reserve)} plus optimizer state, or use a lower --param-dtype.")


def _infeasible(inf: Infeasible, groups: list[_Group], fixed: FixedBytes, budget: int, reserve: int,
                world: int, extra: int = 0) -> str:
    need = fixed.total + reserve + extra + -(-inf.min_bytes // world)
    big = max(range(len(groups)), key=lambda g: sum(groups[g].cands[c].state_bytes * n
                                                    for c, n in inf.assign[g].items()))
    label = groups[big].cands[next(iter(inf.assign[big]))].cfg.label()
    have, want = fmt_pair(budget, need)
    return (f"memory budget {have} is below the minimum any plan needs, {want} "
            f"(reached with mostly {label}); raise --memory-budget to at least {want}"
            f"{' or lower --reserve' if reserve else ''}{' or lower --batch-size/--seq-len' if extra else ''}.")
