"""``--explain TENSOR``: why a tensor got its choice.

Lists the tensor's efficient candidates (the upper convex hull of score against bytes, plus the chosen one), with their
state bytes, workspace, score and value per byte, marks the chosen one, and compares every alternative with the
budget's shadow price at the optimum (the parameter-weighted score one more GiB would buy). A costlier
candidate was not taken because its score gain per GiB is below that price; a cheaper one because it gives up
more score than its saved bytes are worth. With a hardware profile every row also shows its predicted step time,
and a candidate the time budget excludes says so. A vector (merged order 1) also lists the best matrix
candidate and why the score model gives it nothing over the diagonal one (``planner.quality``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from ..errors import UserError
from ..methods.layout import MethodConfig
from . import candidates as cand
from .analysis import ModelSpec
from .plan import Plan


@dataclass
class Row:
    label: str
    state_bytes: int
    workspace_bytes: int
    score: float
    chosen: bool
    gain_per_gib: float | None  # score (parameter-weighted, whole model) per GiB relative to the chosen one
    step_ms: float | None = None


@dataclass
class Explanation:
    name: str
    shape: tuple[int, ...]
    numel: int
    chosen: str
    price_per_gib: float | None
    binding: str | None
    rows: list[Row]
    note: str | None = None
    time_budget_ms: float | None = None
    step_ms: float | None = None  # the whole plan's predicted step
    per_device: bool = False  # a mesh plan: state bytes are the largest device's share


def _timer(plan: Plan, name: str | None = None):
    """The plan's profile as a step timer, when it can be resolved again (None otherwise). An alternative for
    tensor ``name`` is timed with the non-finite guard as the optimizer holding it and the plan's other tensors
    would run it (``nonfinite_guard: auto``: on when any of their methods is a matrix method)."""
    if not plan.hardware:
        return None
    from ..errors import UserError as _UE
    from ..profiles.cost import CostModel
    from ..profiles.registry import label, resolve
    from .timing import StepTimer

    for source in (plan.hardware, "auto"):
        try:
            prof = resolve(source)
        except (_UE, OSError, ValueError):
            continue
        if prof is not None and label(prof) == plan.hardware:
            base = StepTimer(CostModel(prof), plan.defaults)
            methods = {e.method for e in plan.tensors if e.method and e.name != name}  # the other tensors
            return lambda shape, cfg: base.for_methods(methods | {cfg.method})(shape, cfg)
    return None


def explain(plan: Plan, spec: ModelSpec, name: str) -> Explanation:
    entry = next((e for e in plan.tensors if e.name == name or name in e.tied), None)
    if entry is None:
        close = difflib.get_close_matches(name, [e.name for e in plan.tensors], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"tensor {name!r} is not in the plan{hint}; give a name from `sketchplan show --per-tensor`.")
    chosen = entry.config()
    if chosen is None:
        return Explanation(entry.name, tuple(entry.shape), 0, "frozen (no optimizer state)", None, None, [])
    grid = plan.grid
    configs = cand.candidate_configs(*(tuple(getattr(grid, f)) for f in
                                       ("methods", "ranks", "block_sizes", "grafts", "momenta", "compress"))) \
        if grid else []
    shape = tuple(entry.shape)
    muon_note = None
    param = next((p for p in spec.params if p.name == entry.name), None)
    if param is not None and any(c.method == "muon" for c in configs):  # issue 19 part A: as the solver offers it
        from .structure import structured

        kept = [c for c in (structured(c, param) for c in configs) if c is not None]
        if not any(c.method == "muon" for c in kept):
            muon_note = (f"Muon is not offered for {entry.name}: its authors train embeddings and output heads "
                         "(and tied tensors) with AdamW, so the planner gives them Adam-family candidates.")
        configs = kept
    timer = _timer(plan, entry.name)
    mesh = plan.settings.mesh
    per_device = None
    if mesh:  # the budget is one device's: rows weigh the largest device's share, as the solver did
        from .mesh import largest_tensor_bytes

        spec_ = tuple(tuple(x) if isinstance(x, list) else x for x in (entry.spec or ()))
        per_device = (lambda cfg: largest_tensor_bytes(shape, cfg, plan.defaults, spec_, mesh))
    cands = cand.candidates_for(shape, configs, plan.defaults, timer=timer, device_bytes=per_device)
    if not any(c.cfg == chosen for c in cands):
        extra = cand.evaluate(shape, chosen, plan.defaults)
        cands.append(extra if per_device is None else replace(extra, device_bytes=per_device(chosen)))
    if per_device is not None:  # shown and compared per device
        cands = [replace(c, state_bytes=c.device_bytes) for c in cands]
    numel = 1
    for d in shape:
        numel *= d
    total = max(1, spec.n_trainable)
    ch = next(c for c in cands if c.cfg == chosen)
    # the efficient trade-offs: the upper concave hull of (bytes, score), plus the chosen candidate
    from .solve import Item, _hull

    item = Item(1, [c.state_bytes for c in cands], [c.workspace_bytes for c in cands], [c.score for c in cands])
    keep = set(_hull(list(range(len(cands))), item)) | {cands.index(ch)}
    if timer is not None:  # the fastest candidate too: what the time budget can always afford
        keep.add(min(range(len(cands)), key=lambda i: (cands[i].time_ms, -cands[i].score)))
    shown = [cands[i] for i in keep]
    note = None
    from ..methods import METHOD_MODULES
    from ..methods.blocking import merged_shape

    if len(merged_shape(shape, plan.defaults.merge_dims)) == 1:
        mats = [c for c in (cand.evaluate(shape, cfg, plan.defaults) for cfg in configs)
                if METHOD_MODULES[c.cfg.method].MATRIX]
        if mats:
            m = max(mats, key=lambda c: (c.score, -c.state_bytes))
            if timer is not None:
                m = replace(m, time_ms=timer(shape, m.cfg)[0])
            if per_device is not None:
                m = replace(m, state_bytes=per_device(m.cfg))
            if all(x.cfg != m.cfg for x in shown):
                shown.append(m)
            from .quality import VECTOR_MATRIX_GAIN

            note = (f"{entry.name} is a vector ({shape[0]:,} elements): a matrix method would keep a "
                    f"{shape[0]:,}×{shape[0]:,} factor ({m.cfg.label()}: {m.state_bytes:,} B of state vs "
                    f"{ch.state_bytes:,} B). The calibrated score model credits preconditioning a vector with "
                    f"{VECTOR_MATRIX_GAIN:g} of the gap to Shampoo's score (no measured gain; see "
                    "docs/score-model.md), so the matrix candidate scores {:.3f}, no better than the diagonal one, "
                    "and costs more bytes and time.".format(m.score))
    rows = []
    for c in sorted(shown, key=lambda c: c.state_bytes):
        db = c.state_bytes - ch.state_bytes
        ds = (c.score - ch.score) * numel / total
        gain = None if db == 0 else ds / (db / 2**30)
        rows.append(Row(c.cfg.label(), c.state_bytes, c.workspace_bytes, c.score, c.cfg == chosen, gain,
                        c.time_ms if timer is not None else None))
    s = plan.solver
    if muon_note:
        note = muon_note if note is None else note + " " + muon_note
    return Explanation(entry.name, shape, numel, MethodConfig.label(chosen), s.price_per_gib if s else None,
                       s.binding if s else None, rows, note, plan.budget.time_budget_ms, plan.totals.step_ms,
                       per_device=per_device is not None)
