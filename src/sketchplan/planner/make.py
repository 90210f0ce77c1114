"""``make_plan``: from a model and a budget to a ``Plan`` (the planner's whole pipeline, no I/O).

analyse → group identical trainable shapes → evaluate candidates per distinct shape (exact bytes from the
optimizers' layouts) → solve the knapsack → one entry per tensor, totals, what-if alternatives.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from .. import __version__
from ..errors import UserError
from ..methods import state_layout
from ..methods.layout import MethodConfig, OptimizerDefaults
from ..profiles.cost import CostModel
from ..profiles.registry import label as profile_label
from ..profiles.registry import resolve as resolve_profile
from . import candidates as cand
from .analysis import ModelSpec, ParamSpec, analyze
from .memory import FixedBytes, Precision, fixed_bytes, largest_rank, shard_units, step_peak
from .plan import (ActivationInfo, Budget, CandidateGrid, ModelInfo, Plan, Settings, SolverInfo, TensorEntry,
                   Totals, WhatIf)
from .sizes import fmt_bytes, parse_size
from .solve import Infeasible, Item
from .solve_time import InfeasibleTime, solve_two
from .solve_time import binding as bind_report
from .timing import StepTimer


@dataclass
class _Group:
    shape: tuple[int, ...]
    params: list[ParamSpec]
    cands: list[cand.Candidate]


def _groups(spec: ModelSpec, configs: list[MethodConfig], opts: OptimizerDefaults, spectra=None) -> list[_Group]:
    """Tensors of one shape share their candidates, except probed ones: each has its own measured spectrum."""
    spectra = spectra or {}
    by_key: OrderedDict[tuple, list[ParamSpec]] = OrderedDict()
    for p in spec.trainable:
        by_key.setdefault((p.shape, p.name if p.name in spectra else None), []).append(p)
    return [_Group(shape, ps, cand.candidates_for(shape, configs, opts, spectra.get(name)))
            for (shape, name), ps in by_key.items()]


def _entries(spec: ModelSpec, choice: dict[str, cand.Candidate],
             timer: StepTimer | None = None) -> list[TensorEntry]:
    out = []
    for p in spec.params:
        c = choice.get(p.name)
        e = TensorEntry(name=p.name, shape=list(p.shape), dtype=p.dtype, trainable=p.trainable, tied=list(p.tied))
        if c is not None:
            e.method, e.rank, e.block_size = c.cfg.method, c.cfg.rank, c.cfg.block_size
            e.graft, e.momentum = c.cfg.graft, c.cfg.momentum
            e.state_bytes, e.workspace_bytes, e.score = c.state_bytes, c.workspace_bytes, round(c.score, 6)
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
    tensor_workspace: int = 0


def _costs(spec: ModelSpec, choice: dict[str, cand.Candidate], opts: OptimizerDefaults, world: int,
           shard: bool, param_dtype: str | None = None) -> _Costs:
    from .transients import step_workspace

    state = sum(c.state_bytes for c in choice.values())
    ws, ws_tensors = step_workspace([(p.shape, p.dtype, choice[p.name].cfg, {}) for p in spec.trainable], opts,
                                    param_dtype)
    w = sum(p.numel for p in spec.trainable)
    score = sum(choice[p.name].score * p.numel for p in spec.trainable) / w if w else 1.0
    by_method: dict[str, int] = {}
    for c in choice.values():
        by_method[c.cfg.method] = by_method.get(c.cfg.method, 0) + c.state_bytes
    per_rank = state
    if shard and world > 1:
        units: list[int] = []
        for p in spec.trainable:
            units += shard_units(state_layout(p.shape, choice[p.name].cfg, opts), world)
        per_rank = largest_rank(units, world)
    return _Costs(state, per_rank, ws, score, by_method, ws_tensors)


def _what_ifs(spec, opts, fixed, avail, world, shard, ranks, block_sizes, timer=None, act=None,
              param_dtype=None, ret=0) -> list[WhatIf]:
    alts = [MethodConfig(method="adam"), MethodConfig(method="shampoo")]
    alts += [MethodConfig(method="blocked_shampoo", block_size=b) for b in block_sizes]
    alts += [MethodConfig(method="sketchy", rank=k, graft="adafactor", momentum="bfloat16") for k in ranks]
    out = []
    cache: dict[tuple, cand.Candidate] = {}
    for cfg in alts:
        choice = {}
        for p in spec.trainable:
            key = (p.shape, cfg)
            if key not in cache:
                cache[key] = cand.evaluate(p.shape, cfg, opts)
            choice[p.name] = cache[key]
        c = _costs(spec, choice, opts, world, shard, param_dtype)
        peak = step_peak(fixed, c.per_rank, c.workspace, spec.buffers_bytes, act, ret)
        ms = None if timer is None else round(sum(timer(p.shape, cfg)[0] for p in spec.trainable), 3)
        out.append(WhatIf(label="all " + cfg.label(), state_bytes=c.state, peak_bytes=peak,
                          fits=avail is None or peak <= avail, score=round(c.score, 6), step_ms=ms))
    return out


def _assemble(spec, choice, opts, fixed, budget, prec, world, shard, solver, ranks, block_sizes, hardware,
              grid: CandidateGrid | None = None, activations: ActivationInfo | None = None) -> Plan:
    from .transients import step_workspace

    c = _costs(spec, choice, opts, world, shard, prec.param_dtype)
    profile = resolve_profile(hardware)
    timer = None if profile is None else StepTimer(CostModel(profile), opts)
    entries = _entries(spec, choice, timer)
    step_ms = None if timer is None else round(sum(e.step_ms or 0.0 for e in entries), 3)
    avail = budget.available()
    ws, ws_tensors = step_workspace([(tuple(e.shape), e.dtype, e.config(), e.options()) for e in entries
                                     if e.method is not None], opts, prec.param_dtype)
    act = None if activations is None or activations.source != "fake-tensor trace" else activations.peak_bytes
    ret = 0 if act is None else activations.retained_bytes
    totals = Totals(
        params_bytes=fixed.params, grads_bytes=fixed.grads, master_bytes=fixed.master, state_bytes=c.state,
        state_bytes_per_rank=c.per_rank if (shard and world > 1) else None, workspace_bytes=ws,
        kernel_scratch_bytes=ws - ws_tensors, buffers_bytes=spec.buffers_bytes, activation_bytes=act,
        peak_bytes=step_peak(fixed, c.per_rank, ws, spec.buffers_bytes, act, ret), state_bytes_by_method=c.by_method,
        step_ms=step_ms, score=round(c.score, 6),
    )
    return Plan(
        created_by=f"sketchplan {__version__}",
        model=ModelInfo(source=spec.source, fingerprint=spec.fingerprint, n_params=spec.n_params,
                        n_trainable=spec.n_trainable, n_tensors=len(spec.params), buffers_bytes=spec.buffers_bytes),
        hardware=None if profile is None else profile_label(profile),
        budget=budget,
        settings=Settings(param_dtype=prec.param_dtype, grad_dtype=prec.grad_dtype,
                          master_weights=prec.master_weights, world_size=world, shard_optimizer_state=shard),
        defaults=opts,
        grid=grid,
        tensors=entries,
        totals=totals,
        what_if=_what_ifs(spec, opts, fixed, avail, world, shard, ranks, block_sizes, timer, act, prec.param_dtype,
                          ret),
        solver=solver,
        activations=activations,
    )


def make_plan(model, memory_budget=None, *, source: str = "", methods=cand.DEFAULT_METHODS,
              ranks=cand.DEFAULT_RANKS, block_sizes=cand.DEFAULT_BLOCK_SIZES, grafts=cand.DEFAULT_GRAFTS,
              momenta=cand.DEFAULT_MOMENTA, defaults: OptimizerDefaults | None = None, reserve=0,
              world_size: int = 1, shard_optimizer_state: bool = False, param_dtype: str | None = None,
              grad_dtype: str | None = None, master_weights: bool = False, hardware=None,
              spectrum=None, time_budget_ms: float | None = None, activations=None, example_inputs=None,
              headroom: float | None = None) -> Plan:
    """Choose one candidate per trainable tensor maximising the parameter-weighted score within the budget.

    ``model``: an ``nn.Module`` (meta device is fine) or a ``ModelSpec``. ``memory_budget``: bytes or a size
    string (``"24GiB"``); None plans without a memory limit (each tensor's best candidate). ``reserve``:
    bytes kept free for activations. ``spectrum``: a ``SpectrumFile`` (or its path) from ``sketchplan probe``;
    probed tensors are scored by their measured spectra. ``hardware``: ``"auto"``, a shipped profile name, a
    profile file or a ``HardwareProfile``; with one, every entry gets its predicted ``step_ms`` and fastest kernel
    ``variant`` (``planner.timing``) and the totals the step time; None predicts no times.
    ``time_budget_ms``: the amortised optimizer step time allowed (predicted with ``hardware``, ``auto`` when
    None); the solver then honours both budgets (``planner.solve_time``) and reports which binds and what
    relaxing it would buy. ``example_inputs``: a callable returning the inputs of one training batch (a dict of
    keyword arguments, a tuple of positional ones, or one tensor); the forward and backward are traced with fake
    tensors (``planner.activations``) and the budget then covers the whole training step. ``activations``: an
    ``ActivationInfo`` traced before (``planner.activations.trace_activations``). ``headroom``: the fraction of
    the budget left to the allocator (default ``planner.activations.DEFAULT_HEADROOM`` with traced activations,
    0 without). Raises ``UserError`` when no plan fits, naming the minimum.
    """
    t0 = time.perf_counter()
    opts = defaults or OptimizerDefaults()
    spec = analyze(model, source=source)
    prec = Precision(param_dtype, grad_dtype, master_weights)
    if world_size < 1:
        raise UserError(f"world size {world_size} must be at least 1.")
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
    configs = cand.candidate_configs(tuple(methods), tuple(ranks), tuple(block_sizes), tuple(grafts), tuple(momenta))
    if isinstance(spectrum, (str, bytes)) or hasattr(spectrum, "__fspath__"):
        from .spectrum import SpectrumFile

        spectrum = SpectrumFile.load(str(spectrum))
    groups = _groups(spec, configs, opts, spectrum.tensors if spectrum is not None else None)
    fixed = fixed_bytes(spec, prec)
    items = [Item(len(g.params), [c.state_bytes for c in g.cands], [c.workspace_bytes for c in g.cands],
                  [c.score * _numel(g.shape) for c in g.cands]) for g in groups]
    if time_budget_ms is not None:
        if time_budget_ms <= 0:
            raise UserError(f"time budget {time_budget_ms:g} ms must be positive.")
        hardware = "auto" if hardware is None else hardware
        timer = StepTimer(CostModel(resolve_profile(hardware)), opts)
        for g, it in zip(groups, items):
            it.time = [timer(g.shape, c.cfg)[0] for c in g.cands]
    shard = shard_optimizer_state and world_size > 1
    avail = budget.available()
    ret = activations.retained_bytes if act is not None else 0
    kept = fixed.total + spec.buffers_bytes + max(0, (act or 0) - fixed.grads, ret)
    if avail is not None and fixed.total > avail:
        raise UserError(_fixed_too_big(fixed, budget_bytes, reserve_bytes))
    if avail is not None and kept > avail:
        from .activations import too_big

        raise UserError(too_big(activations, kept, budget_bytes, headroom))
    state_budget = None if avail is None else (avail - kept) * (world_size if shard else 1)
    for _ in range(50):
        try:
            sol = solve_two(items, state_budget, time_budget_ms)
        except InfeasibleTime as inf:
            raise UserError(f"time budget {time_budget_ms:g} ms is below the fastest plan's predicted optimizer step, "
                            f"{inf.min_ms:.3g} ms; raise --time-budget-ms to at least {inf.min_ms:.3g}.") from None
        except Infeasible as inf:
            if shard and state_budget < (avail - kept) * world_size:
                raise UserError(f"with --world-size {world_size} no plan fits {fmt_bytes(avail)} per rank because "
                                "preconditioner blocks cannot be split across ranks; raise --memory-budget or use "
                                "smaller --block-sizes.") from None
            raise UserError(_infeasible(inf, groups, fixed, budget_bytes, reserve_bytes, world_size if shard else 1,
                                        kept - fixed.total + int(budget_bytes * headroom))) from None
        choice = _choice(groups, sol.assign)
        if avail is None:
            break
        c = _costs(spec, choice, opts, world_size, shard, param_dtype)
        over = step_peak(fixed, c.per_rank, c.workspace, spec.buffers_bytes, act, ret) - avail
        if over <= 0:
            break
        state_budget -= max(over, state_budget // 200, 1)
    else:  # pragma: no cover - the loop shrinks the budget each round
        raise UserError("could not fit the sharded optimizer state; raise --memory-budget.")
    binding, relax = bind_report(items, state_budget, time_budget_ms, sol)
    n = max(1, spec.n_trainable)
    gap = sol.gap / n
    price = sol.extra.get("price", 0.0) * 2**30 / n if binding and "memory" in binding else 0.0
    relax_info = {k: {"score": round(v["value"] / n, 6), "peak_bytes": float(fixed.total + v["bytes"]),
                      "step_ms": round(v["time_ms"], 3)} for k, v in relax.items()} or None
    info = SolverInfo(status=sol.status, gap=gap, binding=binding, price_per_gib=price, relax=relax_info,
                      seconds=round(time.perf_counter() - t0, 4))
    budget.time_budget_ms = time_budget_ms
    grid = CandidateGrid(methods=list(methods), ranks=list(ranks), block_sizes=list(block_sizes),
                         grafts=list(grafts), momenta=list(momenta))
    return _assemble(spec, choice, opts, fixed, budget, prec, world_size, shard, info, ranks, block_sizes, hardware,
                     grid, activations)


def uniform_plan(model, cfg: MethodConfig, defaults: OptimizerDefaults | None = None, *, source: str = "",
                 memory_budget=None, hardware=None) -> Plan:
    """A plan that gives every trainable tensor the same configuration (tests, what-ifs, baselines)."""
    return plan_from_configs(model, cfg, defaults, source=source, memory_budget=memory_budget, hardware=hardware)


def plan_from_configs(model, configs, defaults: OptimizerDefaults | None = None, *, source: str = "",
                      memory_budget=None, hardware=None) -> Plan:
    """A plan with the given choice per tensor: ``configs`` is one ``MethodConfig`` for all trainable tensors, or a
    mapping name → ``MethodConfig`` (or a callable ``ParamSpec -> MethodConfig``). Bytes come from the layouts."""
    opts = defaults or OptimizerDefaults()
    spec = analyze(model, source=source)
    if isinstance(configs, MethodConfig):
        pick = lambda p: configs  # noqa: E731
    elif callable(configs):
        pick = configs
    else:
        missing = [p.name for p in spec.trainable if p.name not in configs]
        if missing:
            raise UserError(f"no configuration given for tensor {missing[0]!r}.")
        pick = lambda p: configs[p.name]  # noqa: E731
    choice = {p.name: cand.evaluate(p.shape, pick(p), opts) for p in spec.trainable}
    budget = Budget(memory_bytes=None if memory_budget is None else parse_size(memory_budget, "memory budget"))
    info = SolverInfo(status="exact", gap=0.0, binding=None)
    used = {c.cfg for c in choice.values()}
    ranks = tuple(sorted({c.rank for c in used if c.rank}))
    blocks = tuple(sorted({c.block_size for c in used if c.block_size}))
    return _assemble(spec, choice, opts, fixed_bytes(spec, Precision()), budget, Precision(), 1, False, info,
                     ranks, blocks, hardware)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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
    return (f"memory budget {fmt_bytes(budget)}{f' minus reserve {fmt_bytes(reserve)}' if reserve else ''} is below "
            f"what {what} alone need ({fmt_bytes(fixed.total)}); raise --memory-budget to at least "
            f"{fmt_bytes(fixed.total + reserve)} plus optimizer state, or use a lower --param-dtype.")


def _infeasible(inf: Infeasible, groups: list[_Group], fixed: FixedBytes, budget: int, reserve: int,
                world: int, extra: int = 0) -> str:
    need = fixed.total + reserve + extra + -(-inf.min_bytes // world)
    big = max(range(len(groups)), key=lambda g: sum(groups[g].cands[c].state_bytes * n
                                                    for c, n in inf.assign[g].items()))
    label = groups[big].cands[next(iter(inf.assign[big]))].cfg.label()
    return (f"memory budget {fmt_bytes(budget)} is below the minimum any plan needs, {fmt_bytes(need)} "
            f"(reached with mostly {label}); raise --memory-budget to at least {fmt_bytes(need)}"
            f"{' or lower --reserve' if reserve else ''}{' or lower --batch-size/--seq-len' if extra else ''}.")
