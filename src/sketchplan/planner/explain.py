"""``--explain TENSOR``: why a tensor got its choice.

Lists the tensor's efficient candidates (the upper convex hull of score against bytes, plus the chosen one), with their
state bytes, workspace, score and value per byte, marks the chosen one, and compares every alternative with the
budget's shadow price at the optimum (the parameter-weighted score one more GiB would buy). A costlier
candidate was not taken because its score gain per GiB is below that price; a cheaper one because it gives up
more score than its saved bytes are worth.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

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


@dataclass
class Explanation:
    name: str
    shape: tuple[int, ...]
    numel: int
    chosen: str
    price_per_gib: float | None
    binding: str | None
    rows: list[Row]


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
                                       ("methods", "ranks", "block_sizes", "grafts", "momenta"))) if grid else []
    shape = tuple(entry.shape)
    cands = cand.candidates_for(shape, configs, plan.defaults)
    if not any(c.cfg == chosen for c in cands):
        cands.append(cand.evaluate(shape, chosen, plan.defaults))
    numel = 1
    for d in shape:
        numel *= d
    total = max(1, spec.n_trainable)
    ch = next(c for c in cands if c.cfg == chosen)
    # the efficient trade-offs: the upper concave hull of (bytes, score), plus the chosen candidate
    from .solve import Item, _hull

    item = Item(1, [c.state_bytes for c in cands], [c.workspace_bytes for c in cands], [c.score for c in cands])
    keep = set(_hull(list(range(len(cands))), item)) | {cands.index(ch)}
    rows = []
    for c in sorted((cands[i] for i in keep), key=lambda c: c.state_bytes):
        db = c.state_bytes - ch.state_bytes
        ds = (c.score - ch.score) * numel / total
        gain = None if db == 0 else ds / (db / 2**30)
        rows.append(Row(c.cfg.label(), c.state_bytes, c.workspace_bytes, c.score, c.cfg == chosen, gain))
    s = plan.solver
    return Explanation(entry.name, shape, numel, MethodConfig.label(chosen), s.price_per_gib if s else None,
                       s.binding if s else None, rows)
