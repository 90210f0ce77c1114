"""``sketchplan show PLAN --plot FILE.png``: the two pictures people look at before the tables.

Left: optimizer-state memory per layer, stacked by method (tensors are grouped by their layer index — the
first number in their name — and the rest into "other"). Right: the memory-vs-score frontier of the whole
model — the plan re-solved at budgets from the least any plan needs up to the unconstrained optimum, with the
chosen plan and the single-method alternatives marked. Needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import re
from collections import OrderedDict

from .errors import UserError
from .planner.plan import Plan

_LAYER = re.compile(r"(?:^|[./])(\d+)(?=[./])")
COLORS = {"adam": "#8c8c8c", "shampoo": "#1f77b4", "blocked_shampoo": "#2ca02c", "sketchy": "#d62728",
          "extreme_tensoring": "#9467bd", "kradagrad": "#ff7f0e"}
COLORS["soap"] = "#17becf"  # issue 19b


def layer_of(name: str) -> str:
    m = _LAYER.search(name)
    return m.group(1) if m else "other"


def per_layer(plan: Plan) -> tuple[list[str], dict[str, list[int]]]:
    layers: OrderedDict[str, dict[str, int]] = OrderedDict()
    for e in plan.tensors:
        if e.method is None:
            continue
        layers.setdefault(layer_of(e.name), {})
        layers[layer_of(e.name)][e.method] = layers[layer_of(e.name)].get(e.method, 0) + e.state_bytes
    keys = sorted(layers, key=lambda k: (k == "other", int(k) if k.isdigit() else 0))
    methods = sorted({m for v in layers.values() for m in v})
    return keys, {m: [layers[k].get(m, 0) for k in keys] for m in methods}


def frontier(plan: Plan, spec, points: int = 24) -> list[tuple[int, float]]:
    """(peak bytes, score) of the plan re-solved at ``points`` budgets between the minimum and the optimum."""
    from .planner import make_plan

    grid = plan.grid
    kw = dict(methods=grid.methods, ranks=grid.ranks, block_sizes=grid.block_sizes, grafts=grid.grafts,
              momenta=grid.momenta) if grid else {}
    s = plan.settings
    from .planner.parallel import settings_kwargs

    common = dict(defaults=plan.defaults, **settings_kwargs(s),
                  param_dtype=s.param_dtype, grad_dtype=s.grad_dtype, master_weights=s.master_weights, **kw)
    if s.mesh is not None:  # the specs the plan was made with (a spec tree given in Python is not in the model)
        common["partition_specs"] = {e.name: e.spec for e in plan.tensors if e.spec is not None}
    top = make_plan(spec, None, **common)
    hi = top.totals.peak_bytes
    lo = hi
    for w in plan.what_if:
        lo = min(lo, w.peak_bytes)
    lo = min(lo, plan.totals.peak_bytes)
    out = []
    for i in range(points + 1):
        budget = int(lo * (hi / lo) ** (i / points)) if lo > 0 else hi
        try:
            p = make_plan(spec, budget, **common)
        except UserError:
            continue
        out.append((p.totals.peak_bytes, p.totals.score))
    return out


#: byte units for the axes, largest first
UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def byte_unit(largest: float) -> tuple[str, int]:
    """The largest binary unit in which ``largest`` is at least 1 (``B`` below 1 KiB): a tiny MLP's axis reads
    KiB, not 0.0012 GiB."""
    for name, scale in UNITS:
        if largest >= scale:
            return name, scale
    return "B", 1


def label_overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of visible texts (tick labels, annotations, titles, axis labels) whose drawn boxes intersect, across
    the whole figure (pixels of the rendered figure; touching edges do not count)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels() + ax.texts
             + [ax.title, ax.xaxis.label, ax.yaxis.label] if t.get_visible() and t.get_text()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    found = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            if ba.x0 < bb.x1 - 0.5 and bb.x0 < ba.x1 - 0.5 and ba.y0 < bb.y1 - 0.5 and bb.y0 < ba.y1 - 0.5:
                found.append((a, b))
    return found


def _thin_ticks(fig, ax) -> None:
    """Show every n-th layer label, n the smallest that leaves no two labels overlapping."""
    labels = ax.get_xticklabels()
    for step in range(1, len(labels) + 1):
        for i, t in enumerate(labels):
            t.set_visible(i % step == 0 or i == len(labels) - 1 and labels[i].get_text() == "other")
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        shown = [t.get_window_extent(r) for t in labels if t.get_visible()]
        if all(a.x1 <= b.x0 for a, b in zip(shown, shown[1:])):
            return


def _clear_corner(fig, ax) -> None:
    """Hide the y tick labels that meet an x tick label (the lowest y tick sits in the axes' corner, next to the
    first x tick; which ticks exist depends on the data)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    xs = [t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    for t in ax.get_yticklabels():
        if t.get_visible() and t.get_text():
            b = t.get_window_extent(r)
            if any(b.x0 < x.x1 and x.x0 < b.x1 and b.y0 < x.y1 and x.y0 < b.y1 for x in xs):
                t.set_visible(False)


def _place_annotations(fig, ax, notes) -> None:
    """Annotate points, moving a label up (then down) in steps of its height until it meets no earlier label."""
    r = None
    placed = []
    for text, xy in notes:
        for k in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5):
            a = ax.annotate(text, xy, fontsize=7, textcoords="offset points", xytext=(4, -8 + 9 * k),
                            arrowprops=dict(arrowstyle="-", color="#bbb", lw=0.5) if k else None)
            fig.canvas.draw()
            r = r or fig.canvas.get_renderer()
            box = a.get_window_extent(r)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            a.remove()


def draw_plan(plan: Plan, spec=None, points: int = 24):
    """The figure of ``plot_plan`` (matplotlib ``Figure``), axis units chosen from the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1.6, 1]})
    keys, stacks = per_layer(plan)
    totals = [sum(col) for col in zip(*stacks.values())] or [0]
    unit, scale = byte_unit(max(totals))
    bottom = [0.0] * len(keys)
    for m, vals in stacks.items():
        ax1.bar(range(len(keys)), [v / scale for v in vals], bottom=bottom, color=COLORS.get(m), label=m)
        bottom = [b + v / scale for b, v in zip(bottom, vals)]
    ax1.set_xticks(range(len(keys)))
    ax1.set_xticklabels(keys, rotation=90 if len(keys) > 30 else 0, fontsize=7 if len(keys) > 30 else 9)
    ax1.set_xlabel("layer (first index in the tensor name; embeddings, heads and norms under 'other')")
    ax1.set_ylabel(f"optimizer state ({unit})")
    ax1.set_title(f"{plan.model.source}: optimizer state per layer, by method")
    ax1.legend()
    pts = frontier(plan, spec, points) if spec is not None else []
    xs = [b for b, _ in pts] + [w.peak_bytes for w in plan.what_if] + [plan.totals.peak_bytes]
    budget = (plan.budget.memory_bytes - plan.budget.reserve_bytes) if plan.budget.memory_bytes is not None else None
    unit2, scale2 = byte_unit(max(xs + ([budget] if budget else [])))
    if pts:
        ax2.plot([b / scale2 for b, _ in pts], [s for _, s in pts], "-o", ms=3, color="#444",
                 label="best plan at each budget")
    notes = []
    for w in plan.what_if:
        ax2.scatter(w.peak_bytes / scale2, w.score, s=18, marker="x", color="#999")
        if w.label in ("all adam", "all shampoo +adam/fp32") or "k=256" in w.label or "B=1024" in w.label:
            notes.append((w.label.replace("all ", ""), (w.peak_bytes / scale2, w.score)))
    ax2.scatter(plan.totals.peak_bytes / scale2, plan.totals.score, s=160, marker="*", color="#d62728", zorder=5,
                label="this plan")
    if budget is not None:
        ax2.axvline(budget / scale2, ls="--", color="#d62728", lw=1, label="budget")
    ax2.set_xlabel(f"predicted peak memory ({unit2})")
    ax2.set_ylabel("score (parameter-weighted share of Shampoo kept)")
    ax2.set_title("memory vs score frontier")
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _thin_ticks(fig, ax1)
    for ax in (ax1, ax2):
        _clear_corner(fig, ax)
    _place_annotations(fig, ax2, notes)
    return fig


def plot_plan(plan: Plan, path: str, spec=None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib; install it with `pip install 'sketchplan[plot]'`.") from None
    from .files import write_atomic

    fmt = check_plot_path(path)  # before drawing: a format matplotlib cannot write, a target that must not be
    fig = draw_plan(plan, spec)
    import io

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=110)  # drawn in memory: a failure never touches the file
    except Exception as exc:  # e.g. pgf without LaTeX
        raise UserError(f"matplotlib cannot draw --plot {path!r} as {fmt} ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); use .png, .svg or .pdf.") \
            from None
    finally:
        plt.close(fig)
    write_atomic(path, buf.getvalue(), "--plot")


def check_plot_path(path: str) -> str:
    """The image format for ``path`` (its extension; ``png`` without one), or a ``UserError`` when matplotlib is
    missing or cannot write that format, and when the path is not a writable output (``outputs``)."""
    from pathlib import Path

    from .outputs import check_output

    check_output(path, "--plot")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--plot needs matplotlib; install it with `pip install 'sketchplan[plot]'`.") from None
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    ext = Path(path).suffix.lower().lstrip(".")
    if not ext:
        return "png"
    if ext not in formats:
        raise UserError(f"--plot {path!r}: matplotlib cannot write .{ext} files; use one of "
                        f"{', '.join('.' + f for f in sorted(formats))}.")
    return ext
