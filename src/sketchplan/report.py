"""Rendering plans as rich tables: per tensor, per tensor class (layers folded), or per module."""

from __future__ import annotations

import re
from collections import OrderedDict

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .planner.plan import Plan, TensorEntry
from .planner.sizes import fmt_bytes

_LAYER = re.compile(r"(?<=\.)\d+(?=\.)")


def _choice(e: TensorEntry) -> str:
    cfg = e.config()
    return "frozen" if cfg is None else cfg.label()


def choice_parts(e: TensorEntry) -> tuple[str, str, str]:
    """(method, configuration, graft/momentum) of a tensor's choice, e.g. ``("sketchy", "k=256",
    "adafactor/bf16")``: the table gives each its own column so that a narrow terminal never cuts the rank or
    block size off the method (``MethodConfig.label`` joins the same three parts)."""
    cfg = e.config()
    if cfg is None:
        return "frozen", "", ""
    label = cfg.label()
    head, _, rest = label.partition(" +")
    method, _, inner = head.partition("(")
    return method, inner.rstrip(")").replace(", ", ","), rest


def fold_name(name: str) -> str:
    """``model.layers.17.mlp.up_proj.weight`` → ``model.layers.*.mlp.up_proj.weight``."""
    return _LAYER.sub("*", name)


def tensor_rows(plan: Plan, mode: str) -> list[tuple[str, int, str, str, int, int, float | None, float | None]]:
    """(name, count, shape, choice, state bytes, workspace, score, step ms) rows for ``mode``
    tensor|class|module; step ms is the predicted time summed over the row's tensors (None without a profile).
    In module mode the choice is the module's distinct ``method(configuration)`` labels, comma-separated."""
    rows: OrderedDict[tuple, list] = OrderedDict()
    for e in plan.tensors:
        shape = "×".join(map(str, e.shape)) or "scalar"
        if mode == "tensor":
            key = (e.name,)
            label = e.name + (f" (tied: {', '.join(e.tied)})" if e.tied else "")
            shown_shape, choice = shape, _choice(e)
        elif mode == "module":
            mod = fold_name(e.name.rsplit(".", 1)[0] if "." in e.name else e.name)
            key = (mod,)
            label, shown_shape, choice = mod, "", ""
        else:
            label = fold_name(e.name)
            key = (label, shape, _choice(e))
            shown_shape, choice = shape, _choice(e)
        r = rows.setdefault(key, [label, 0, shown_shape, choice, 0, 0, 0.0, 0, None, set(), e])
        r[1] += 1
        if e.step_ms is not None:
            r[8] = (r[8] or 0.0) + e.step_ms
        r[4] += e.state_bytes
        r[5] = max(r[5], e.workspace_bytes)
        numel = 1
        for d in e.shape:
            numel *= d
        if e.score is not None:
            r[6] += e.score * numel
            r[7] += numel
        if mode == "module":
            method, cfg, _ = choice_parts(e)
            r[9].add(f"{method}({cfg})" if cfg else method)
            r[3] = ", ".join(sorted(r[9]))
    return [(r[0], r[1], r[2], r[3], r[4], r[5], (r[6] / r[7]) if r[7] else None, r[8]) for r in rows.values()]


def _device_bytes(plan: Plan, mode: str) -> list[int]:
    """Mesh plans: per row of ``tensor_rows``, the state its tensors put on the device holding most (the sum of
    their ``device_state_bytes``; every device holds the same share of a tensor, ``planner.mesh``)."""
    sums: OrderedDict[tuple, int] = OrderedDict()
    for e in plan.tensors:
        shape = "×".join(map(str, e.shape)) or "scalar"
        key = (e.name,) if mode == "tensor" else (fold_name(e.name), shape, _choice(e))
        if mode == "module":
            key = (fold_name(e.name.rsplit(".", 1)[0] if "." in e.name else e.name),)
        sums[key] = sums.get(key, 0) + (e.device_state_bytes or 0)
    return list(sums.values())


def _entries(plan: Plan, mode: str) -> list[TensorEntry | None]:
    """The first tensor of each row of ``tensor_rows`` (its choice is the row's; None in module mode)."""
    seen: OrderedDict[tuple, TensorEntry | None] = OrderedDict()
    for e in plan.tensors:
        shape = "×".join(map(str, e.shape)) or "scalar"
        key = (e.name,) if mode == "tensor" else (fold_name(e.name), shape, _choice(e))
        if mode == "module":
            key = (fold_name(e.name.rsplit(".", 1)[0] if "." in e.name else e.name),)
        seen.setdefault(key, None if mode == "module" else e)
    return list(seen.values())


def wrap_name(name: str, width: int) -> str:
    """``name`` broken into lines of at most ``width`` characters after its dots (``model.layers.*.`` /
    ``mlp.up_proj.weight``), never inside a component unless one alone is longer than ``width``."""
    if width <= 0 or len(name) <= width:
        return name
    parts = re.findall(r"[^. ]*[. ]|[^. ]+$", name)
    lines, cur = [], ""
    for p in parts:
        while len(p) > width:  # a component longer than the column: fold it
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(p[:width])
            p = p[width:]
        if len(cur) + len(p) > width:
            lines.append(cur)
            cur = ""
        cur += p
    if cur:
        lines.append(cur)
    return "\n".join(line.rstrip() for line in lines)


#: optional columns, dropped in this order when the terminal is too narrow for them (the --json output and a
#: wider terminal keep them); tensor, ×, method and configuration always stay
_DROP_ORDER = ("workspace", "step ms", "shape", "graft", "score")
_RIGHT = {"×", "state", "per device", "workspace", "score", "step ms"}
#: the tensor column is never narrower than this (it is wrapped after dots to fit)
MIN_NAME = 14


def tensor_table(plan: Plan, mode: str = "class", max_rows: int | None = 60, width: int | None = None) -> Table:
    """The per-tensor (or folded, or per-module) table, fitted to ``width`` columns (None: no limit): method and
    configuration (rank k, block size B) have their own columns that never wrap; tensor names wrap after dots;
    optional columns are dropped, and named in the caption, only when they cannot fit."""
    title = {"tensor": "per tensor", "class": "per tensor class (layers folded: *)", "module": "per module"}[mode]
    rows = tensor_rows(plan, mode)
    shown = rows if max_rows is None else rows[:max_rows]
    entries = _entries(plan, mode)[:len(shown)]
    timed = plan.totals.step_ms is not None
    cells: dict[str, list[str]] = {"×": [], "shape": [], "method": [], "k/B": [], "graft": [], "state": [],
                                   "per device": [], "workspace": [], "score": [], "step ms": []}
    mesh = plan.settings.mesh is not None
    per_device = _device_bytes(plan, mode) if mesh else [0] * len(rows)
    for (name, n, shape, choice, state, ws, score, ms), e, dev in zip(shown, entries, per_device):
        method, cfg, graft = choice_parts(e) if e is not None else (choice, "", "")
        for col, v in (("×", str(n)), ("shape", shape), ("method", method), ("k/B", cfg), ("graft", graft),
                       ("state", fmt_bytes(state)), ("per device", fmt_bytes(dev)), ("workspace", fmt_bytes(ws)),
                       ("score", "" if score is None else f"{score:.3f}"),
                       ("step ms", "" if ms is None else _ms(ms))):
            cells[col].append(v)
    cols = ["×"] + (["shape"] if mode != "module" else []) + ["method"] + (
        ["k/B", "graft"] if mode != "module" else []) + ["state"] + (["per device"] if mesh else []) + [
        "workspace", "score"] + (["step ms"] if timed else [])
    if mode != "module":
        cols = [c for c in cols if c not in ("k/B", "graft") or any(cells[c])]

    names = [r[0] for r in shown]
    full = max([len("module" if mode == "module" else "tensor")] + [len(x) for x in names])

    def build(cols: list[str], name_w: int | None) -> Table:
        t = Table(title=f"Plan {title}", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
                  show_edge=False, collapse_padding=True)
        t.add_column("tensor" if mode != "module" else "module", overflow="fold", width=name_w)
        for c in cols:
            head = {"method": "methods" if mode == "module" else "method", "graft": "graft/mom"}.get(c, c)
            t.add_column(head, justify="right" if c in _RIGHT else "left",
                         no_wrap=not (c == "method" and mode == "module"), overflow="fold")
        for i, name in enumerate(names):
            t.add_row(wrap_name(name, name_w) if name_w else name, *[cells[c][i] for c in cols])
        return t

    def natural(t: Table) -> int:
        from rich.console import Console as _C

        probe = _C(width=10_000)
        return Measurement.get(probe, probe.options, t).maximum

    dropped: list[str] = []
    name_w = None
    if width is not None:
        for c in (None,) + _DROP_ORDER:
            if c is not None and c in cols:
                cols.remove(c)
                dropped.append(c)
            spare = width - natural(build(cols, MIN_NAME))
            if spare >= 0:
                break
        name_w = max(MIN_NAME, min(full, MIN_NAME + spare))
    t = build(cols, name_w)
    notes = []
    if len(shown) < len(rows):
        notes.append(f"… {len(rows) - len(shown)} more rows (--all shows every row)")
    if dropped:
        notes.append(f"columns {', '.join(dropped)} left out at {width} columns (a wider terminal or --json has them)")
    if notes:
        t.caption = "; ".join(notes)
        t.caption_justify = "left"
    return t


def plan_json(plan: Plan, mode: str = "class") -> dict:
    """``plan``/``show --json``: the table's rows (every row, with method, configuration and graft apart), the
    totals, the what-ifs and the whole plan, for scripts."""
    rows = []
    for (name, n, shape, choice, state, ws, score, ms), e in zip(tensor_rows(plan, mode), _entries(plan, mode)):
        method, cfg, graft = choice_parts(e) if e is not None else (None, None, None)
        rows.append({"name": name, "count": n, "shape": shape or None, "choice": choice, "method": method,
                     "configuration": cfg, "graft": graft, "state_bytes": state, "workspace_bytes": ws,
                     "score": score, "step_ms": ms})
    data = plan.model_dump(mode="json")
    return {"view": mode, "rows": rows, "totals": data["totals"], "budget": data["budget"],
            "what_if": data.get("what_if"), "solver": data.get("solver"), "plan": data}


def _ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:,.1f}"


def _per_rank_rows(t: Table, plan: Plan) -> None:
    """The largest rank's share of each term (``planner.parallel``)."""
    tot, s = plan.totals, plan.settings
    kind = s.parallelism if s.parallelism != "none" else ("zero1" if s.shard_optimizer_state else "ddp")
    group = f", shard group {s.shard_group}" if s.shard_group else ""
    t.add_row(Text(f"per rank ({kind}, {s.world_size} ranks{group})", style="bold"), "")
    t.add_row("  parameters", fmt_bytes(tot.params_bytes_per_rank or 0))
    owned = " (its own tensors', largest rank)" if kind == "zero2" else ""
    t.add_row("  gradients" + owned, fmt_bytes(tot.grads_bytes_per_rank or 0))
    if tot.master_bytes_per_rank:
        mine = " (its own tensors', largest rank)" if kind in ("zero1", "zero2") else ""
        t.add_row("  master weights (fp32)" + mine, fmt_bytes(tot.master_bytes_per_rank))
    t.add_row("  optimizer state (largest rank)", fmt_bytes(tot.state_bytes_per_rank or 0))
    if tot.state_bytes_by_rank and len(set(tot.state_bytes_by_rank)) > 1:
        t.add_row("  optimizer state (smallest rank)", fmt_bytes(min(tot.state_bytes_by_rank)))
    inflight = " (with the gradient being reduced)" if kind == "zero2" else ""
    t.add_row("  communication buffers" + inflight, fmt_bytes(tot.comm_bytes_per_rank or 0))


def _per_device_rows(t: Table, plan: Plan) -> None:
    """One device's share of each term on a JAX mesh (``planner.mesh``)."""
    tot, mesh = plan.totals, plan.settings.mesh
    n = len(tot.state_bytes_by_device or []) or 1
    label = ",".join(f"{k}={v}" for k, v in mesh.items())
    t.add_row(Text(f"per device (mesh {label}, {n} devices)", style="bold"), "")
    t.add_row("  parameters", fmt_bytes(tot.params_bytes_per_device or 0))
    t.add_row("  gradients", fmt_bytes(tot.grads_bytes_per_device or 0))
    if tot.master_bytes_per_device:
        t.add_row("  master weights (fp32)", fmt_bytes(tot.master_bytes_per_device))
    t.add_row("  optimizer state (largest device)", fmt_bytes(tot.state_bytes_per_device or 0))
    if tot.state_bytes_by_device and len(set(tot.state_bytes_by_device)) > 1:
        t.add_row("  optimizer state (smallest device)", fmt_bytes(min(tot.state_bytes_by_device)))


def totals_table(plan: Plan) -> Table:
    tot, b = plan.totals, plan.budget
    t = Table(title="Totals (predicted)", box=box.SIMPLE_HEAD, title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("bytes", justify="right")
    sharded = tot.peak_bytes_per_rank is not None
    whole = " (all ranks together)" if sharded else ""  # never a total next to a per-rank peak unlabelled
    if sharded:
        t.add_row(Text(f"whole model (not per rank; {plan.settings.world_size} ranks)", style="bold"), "")
    if plan.settings.mesh is not None:
        whole = " (whole model, one copy)"
        t.add_row(Text("whole model (one copy of every array)", style="bold"), "")
    t.add_row("parameters" + (" (one copy)" if sharded else ""), fmt_bytes(tot.params_bytes))
    t.add_row("gradients" + (" (one copy)" if sharded else ""), fmt_bytes(tot.grads_bytes))
    if tot.master_bytes:
        t.add_row("master weights (fp32)" + (" (one copy)" if sharded else ""), fmt_bytes(tot.master_bytes))
    t.add_row("optimizer state" + whole, fmt_bytes(tot.state_bytes))
    if tot.state_bytes_per_rank is not None:
        t.add_row(f"  largest rank of {plan.settings.world_size}", fmt_bytes(tot.state_bytes_per_rank))
    for m, v in sorted(tot.state_bytes_by_method.items(), key=lambda kv: -kv[1]):
        t.add_row(f"  {m}", fmt_bytes(v))
    t.add_row("step workspace (peak)", fmt_bytes(tot.workspace_bytes))
    if tot.buffers_bytes:
        t.add_row("buffers", fmt_bytes(tot.buffers_bytes))
    if plan.activations is not None and tot.activation_bytes is not None:
        a = plan.activations
        t.add_row("forward+backward (traced, fake tensors)", fmt_bytes(tot.activation_bytes))
        if a.checkpointed_peak_bytes is not None and not a.checkpointing:
            t.add_row("  with activation checkpointing", fmt_bytes(a.checkpointed_peak_bytes))
    if tot.peak_bytes_per_rank is not None:
        _per_rank_rows(t, plan)
    mesh = plan.settings.mesh
    if mesh is not None:
        _per_device_rows(t, plan)
    t.add_row(Text("peak" + (" per rank" if tot.peak_bytes_per_rank is not None else "")
                   + (" per device" if mesh is not None else ""), style="bold"),
              Text(fmt_bytes(tot.peak_bytes), style="bold"))
    if b.memory_bytes is not None:
        avail = b.available()
        t.add_row("budget" + (f" (minus reserve {fmt_bytes(b.reserve_bytes)})" if b.reserve_bytes else "")
                  + (f" (minus {b.headroom:.0%} allocator headroom)" if b.headroom else ""), fmt_bytes(avail))
        head = avail - tot.peak_bytes
        t.add_row("headroom", Text(fmt_bytes(head), style="green" if head >= 0 else "red"))
    t.add_row("score (parameter-weighted)", f"{tot.score:.4f}")
    if tot.step_ms is not None:
        t.add_row("optimizer step (predicted, amortised)", f"{_ms(tot.step_ms)} ms")
        if tot.adam_step_ms:
            t.add_row("  vs all-Adam's step", f"{tot.step_ms / tot.adam_step_ms:.2f}× ({_ms(tot.adam_step_ms)} ms)")
        if tot.forward_backward_ms:
            t.add_row(f"  vs forward+backward (6·N·{tot.tokens_per_step or 8192:,} tokens)",
                      f"{100 * tot.step_ms / tot.forward_backward_ms:.1f}% ({_ms(tot.forward_backward_ms)} ms)")
    if b.time_budget_ms is not None:
        t.add_row("time budget", f"{_ms(b.time_budget_ms)} ms" + (f" ({b.time_budget_source})"
                                                                  if b.time_budget_source else ""))
    if plan.solver is not None:
        s = plan.solver
        t.add_row("solver", f"{s.status}, gap ≤ {s.gap:.2e}" + (f", {s.binding} binds" if s.binding else ""))
        for what, r in (s.relax or {}).items():
            ms = r.get("step_ms")  # no time model (or an untimed plan): say nothing rather than "0.0 ms"
            t.add_row(f"  without the {what} budget", f"score {r['score']:.4f} at {fmt_bytes(r['peak_bytes'])}"
                      + (f", {_ms(ms)} ms" if ms and tot.step_ms is not None else ""))
    return t


def what_if_table(plan: Plan) -> Table:
    t = Table(title="What if every tensor used one method", box=box.SIMPLE_HEAD, title_justify="left")
    timed = plan.totals.step_ms is not None
    cols = [("alternative", "left"), ("state", "right"), ("peak", "right"), ("fits", "center"), ("score", "right")]
    for col, j in cols + ([("step ms", "right")] if timed else []):
        t.add_column(col, justify=j)
    t.add_row(Text("this plan", style="bold"), fmt_bytes(plan.totals.state_bytes), fmt_bytes(plan.totals.peak_bytes),
              "yes" if _fits(plan) else "no", f"{plan.totals.score:.4f}",
              *([_ms(plan.totals.step_ms)] if timed else []))
    for w in plan.what_if:
        t.add_row(w.label, fmt_bytes(w.state_bytes), fmt_bytes(w.peak_bytes),
                  Text("yes", style="green") if w.fits else Text("no", style="red"), f"{w.score:.4f}",
                  *([("" if w.step_ms is None else _ms(w.step_ms))] if timed else []))
    return t


def _fits(plan: Plan) -> bool:
    b = plan.budget
    return b.memory_bytes is None or plan.totals.peak_bytes <= b.available()


def render_plan(plan: Plan, console: Console, mode: str = "class", max_rows: int | None = 60) -> None:
    m = plan.model
    console.print(f"[bold]{m.source or 'model'}[/]: {m.n_params:,} parameters in {m.n_tensors} tensors "
                  f"({m.n_trainable:,} trainable)" + (f", hardware: {plan.hardware}" if plan.hardware else ""))
    console.print(Group(tensor_table(plan, mode, max_rows, width=console.width), totals_table(plan),
                        what_if_table(plan)))


def render_check(report, console: Console, max_rows: int | None = 40) -> None:
    """The check's verdicts, the tensors that changed (old → new bytes and delta), and measurements."""
    verdict = Text("PASS", style="bold green") if report.ok else Text("REGRESSION", style="bold red")
    console.print(Text.assemble("sketchplan check ", (report.plan, "bold"), " against ", (report.model, "bold"),
                                ": ", verdict))
    t = Table(box=box.SIMPLE_HEAD, title="Checks", title_justify="left")
    t.add_column("check")
    t.add_column("result", justify="center")
    t.add_column("details", overflow="fold")
    for c in report.checks:
        t.add_row(c.name, Text("ok", style="green") if c.ok else Text("FAIL", style="red"), c.message)
    console.print(t)
    if report.tensors:
        d = Table(box=box.SIMPLE_HEAD, title="Tensors that changed", title_justify="left")
        for col, j in (("tensor", "left"), ("status", "left"), ("shape", "left"), ("old state", "right"),
                       ("new state", "right"), ("delta", "right")):
            d.add_column(col, justify=j, overflow="fold")
        rows = sorted(report.tensors, key=lambda x: (not x.offending, -abs(x.delta)))
        for x in rows if max_rows is None else rows[:max_rows]:
            shape = "×".join(map(str, x.old_shape or [])) or "—"
            if x.new_shape is not None and x.new_shape != x.old_shape:
                shape += " → " + ("×".join(map(str, x.new_shape)) or "scalar")
            style = "red" if x.offending else ""
            d.add_row(Text(x.name, style=style), x.status, shape, f"{x.old_bytes:,}", f"{x.new_bytes:,}",
                      Text(f"{x.delta:+,}", style=style))
        console.print(d)
    m = report.measured
    if m is not None:
        mt = Table(box=box.SIMPLE_HEAD, title=f"Measured on {m.device} ({m.note})", title_justify="left")
        for col in ("method", "tensors", "predicted bytes", "measured bytes", "difference"):
            mt.add_column(col, justify="left" if col == "method" else "right")
        by: dict[str, list[int]] = {}
        for r in m.tensors:
            acc = by.setdefault(r.method, [0, 0, 0])
            acc[0] += 1
            acc[1] += r.predicted_bytes
            acc[2] += r.measured_bytes
        for method, (n, pred, meas) in sorted(by.items()):
            mt.add_row(method, str(n), f"{pred:,}", f"{meas:,}",
                       Text(f"{meas - pred:+,}", style="green" if meas == pred else "red"))
        mt.add_row(Text("total", style="bold"), str(len(m.tensors)), f"{m.predicted_state_bytes:,}",
                   f"{m.measured_state_bytes:,}", f"{m.measured_state_bytes - m.predicted_state_bytes:+,}")
        console.print(mt)


def render_explain(ex, console: Console) -> None:
    from .planner.sizes import fmt_bytes as fb

    shape = "×".join(map(str, ex.shape)) or "scalar"
    console.print(Text.assemble("Why ", (ex.name, "bold"), f" ({shape}) got ", (ex.chosen, "bold")))
    if not ex.rows:
        return
    if ex.note:
        console.print(ex.note)
    if ex.binding and "time" in ex.binding:
        console.print(f"The time budget binds ({ex.time_budget_ms:,.1f} ms; the plan's step is predicted at "
                      f"{ex.step_ms:,.1f} ms): a candidate that adds step time is taken only where its score gain per "
                      "millisecond beats the other tensors'.")
    if ex.price_per_gib:
        console.print(f"The {ex.binding or 'memory'} budget binds: at the optimum one more GiB is worth "
                      f"{ex.price_per_gib:.3g} of model score (the shadow price). An alternative is worth taking "
                      "when its score change per GiB beats that price.")
    elif not ex.binding:
        console.print("No budget binds: every tensor gets its best-scoring candidate (fewest bytes among ties).")
    t = Table(box=box.SIMPLE_HEAD, title="Efficient candidates (score against bytes)", title_justify="left")
    state = "state (largest device)" if ex.per_device else "state"
    for col, j in (("", "center"), ("candidate", "left"), (state, "right"), ("workspace", "right"),
                   ("score", "right"), ("model score per GiB vs chosen", "right"), ("verdict", "left")):
        t.add_column(col, justify=j)
    timed = any(r.step_ms is not None for r in ex.rows)
    if timed:
        t.add_column("step ms", justify="right")
    price = ex.price_per_gib or 0.0
    for r in ex.rows:
        if r.chosen:
            verdict, per = "chosen", "—"
        else:
            per = "—" if r.gain_per_gib is None else f"{r.gain_per_gib:.3g}"
            more = r.state_bytes > next(x for x in ex.rows if x.chosen).state_bytes
            if r.gain_per_gib is None:
                verdict = "same bytes, lower score"
            elif more:
                verdict = "costs more than it adds" if r.gain_per_gib <= price or r.gain_per_gib <= 0 else \
                    "worth it, but did not fit"
            else:
                verdict = "saves bytes but loses more score" if r.gain_per_gib >= price else "cheaper, not needed"
            ch = next(x for x in ex.rows if x.chosen)
            if r.score <= ch.score + 1e-12 and r.state_bytes >= ch.state_bytes:
                verdict = "no better score, more bytes"
            elif timed and r.step_ms is not None and ch.step_ms is not None and r.step_ms > ch.step_ms \
                    and ex.binding and "time" in ex.binding and r.score > ch.score:
                verdict = f"better, but +{r.step_ms - ch.step_ms:.3g} ms (time budget)"
        t.add_row("▶" if r.chosen else "", r.label, fb(r.state_bytes), fb(r.workspace_bytes), f"{r.score:.3f}",
                  per, verdict, *([("" if r.step_ms is None else f"{r.step_ms:.3g}")] if timed else []))
    console.print(t)
