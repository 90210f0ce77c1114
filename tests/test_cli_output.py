"""What the commands print and write (issue 18): tables that fit 80 and 100 columns without losing a tensor's
method and rank/block size, --json for scripts, byte-identical re-plans, a no-op --update, check --model's
source, sharded totals labelled per rank, help with defaults, short errors, profile noise, plot units."""

from __future__ import annotations

import io
import json
import os
import random
import re

import pytest
import yaml
from rich.console import Console

from sketchplan.cli import _parser, main
from sketchplan.planner import make_plan
from sketchplan.planner.plan import Plan
from sketchplan.planner.sources import PRESETS, load_spec
from sketchplan.report import render_plan


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _shapes_file(tmp_path, seed: int) -> str:
    """A random transformer-like shapes file with long, deep names (4 layers, random widths) and stacked experts."""
    rng = random.Random(seed)
    d, f = rng.choice([384, 512, 768]), rng.choice([1024, 1536, 2048])
    params = [{"name": "model.embed_tokens.weight", "shape": [rng.randint(3000, 9000), d]}]
    for i in range(4):
        pre = f"model.encoder.layers.{i}"
        params += [{"name": f"{pre}.self_attention.query_key_value_projection.weight", "shape": [3 * d, d]},
                   {"name": f"{pre}.self_attention.output_projection.weight", "shape": [d, d]},
                   {"name": f"{pre}.feed_forward.experts.gate_up_projection", "shape": [4, d, f]},
                   {"name": f"{pre}.feed_forward.down_projection.weight", "shape": [d, f]},
                   {"name": f"{pre}.input_layernorm.weight", "shape": [d]}]
    path = tmp_path / f"shapes{seed}.yaml"
    path.write_text(yaml.safe_dump({"params": params}))
    return str(path)


def _plans(tmp_path):
    """Plans whose choices include Sketchy ranks, block sizes and per-expert configurations, under a budget
    between all-Sketchy's and all-Shampoo's peak (so that the solver mixes methods)."""
    out = []
    for seed in (1, 2):
        src = _shapes_file(tmp_path, seed)
        spec = load_spec(src)
        top = make_plan(spec, None, source=src, methods=["adam", "blocked_shampoo", "sketchy"],
                        ranks=[16, 64, 256], block_sizes=[256, 1024])
        low = min(w.peak_bytes for w in top.what_if)
        out.append(make_plan(spec, (low + top.totals.peak_bytes) // 2, source=src,
                             methods=["adam", "blocked_shampoo", "sketchy"], ranks=[16, 64, 256],
                             block_sizes=[256, 1024]))
    return out


def _render(plan, width: int, mode: str = "class") -> str:
    buf = io.StringIO()
    render_plan(plan, Console(file=buf, width=width, color_system=None, force_terminal=False), mode, None)
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 100])
def test_plan_table_keeps_method_and_rank_or_block_size_at_80_and_100_columns(tmp_path, width):
    for plan in _plans(tmp_path):
        text = _render(plan, width)
        assert max(map(len, text.splitlines())) <= width
        table = text.split("Totals (predicted)")[0]
        # the expected (method, configuration) of each folded row, read from the plan entries independently
        # of report.py: method name, then k=…/B=… (and "per expert", "packed") as MethodConfig records them
        expected: dict[tuple[str, str], set[str]] = {}
        for e in plan.tensors:
            c = e.config()
            inner = ([f"k={c.rank}"] if c.rank is not None else []) + (
                [f"B={c.block_size}"] if c.block_size is not None else [])
            if c.batch_dims and c.method != "adam":
                inner.append("per expert")
            if c.packed:
                inner.append("packed")
            folded = re.sub(r"(?<=\.)\d+(?=\.)", "*", e.name)
            expected.setdefault((c.method, ",".join(inner)), set()).add(folded)
        assert any(cfg for _, cfg in expected), "the plans must exercise ranks or block sizes"
        for (method, cfg), names in expected.items():
            pattern = re.compile(rf"\s{re.escape(method)}\s+{re.escape(cfg)}(\s|$)" if cfg else
                                 rf"\s{re.escape(method)}(\s|$)")
            hits = [ln for ln in table.splitlines() if pattern.search(ln)]
            assert len(hits) >= len(names), (method, cfg, width, table)


def test_plan_table_uses_the_full_width_when_there_is_room(tmp_path):
    plan = _plans(tmp_path)[0]
    wide = _render(plan, 200)
    for col in ("shape", "graft/mom", "workspace", "score"):
        assert col in wide.split("\n", 3)[2] or col in wide
    assert "left out" not in wide
    assert "model.encoder.layers.*.self_attention.query_key_value_projection.weight" in wide  # never wrapped
    narrow = _render(plan, 80)
    assert "left out at 80 columns" in narrow  # what is not shown is said


def test_by_module_methods_column_names_whole_configurations(tmp_path):
    for plan in _plans(tmp_path):
        text = _render(plan, 160, "module")
        table = text.split("Totals (predicted)")[0]
        methods = set()
        for ln in table.splitlines():
            methods |= set(re.findall(r"\b(?:adam|blocked_shampoo|sketchy)(?:\([^()]*\))?", ln))
        for m in methods:  # every label that opens a parenthesis closes it (the old column cut at spaces)
            assert m.count("(") == m.count(")"), m
        assert not re.search(r",\s*,", table)
        assert any("per expert" in m for m in methods), methods


def test_replan_is_byte_identical_and_update_of_unchanged_plan_writes_nothing(tmp_path, capsys):
    src = _shapes_file(tmp_path, 3)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for path in (a, b):
        code, out, _ = run(capsys, "plan", "--model", src, "--memory-budget", "1GiB", "--out", str(path))
        assert code == 0
    assert a.read_bytes() == b.read_bytes()
    assert "seconds" not in yaml.safe_load(a.read_text())["solver"]
    # how to use it, on one unbroken line whatever the path's length (a long tmp path was once split mid-word)
    assert "build_optimizer" in out and any(f"sketchplan check {b}" in line for line in out.splitlines())
    before = os.stat(a).st_mtime_ns, a.read_bytes()
    code, out, _ = run(capsys, "plan", "--update", str(a))
    assert code == 0 and "nothing written" in out
    assert (os.stat(a).st_mtime_ns, a.read_bytes()) == before


def test_json_of_plan_and_show_is_parseable_and_carries_the_configuration(tmp_path, capsys):
    src = _shapes_file(tmp_path, 4)
    path = tmp_path / "p.yaml"
    code, out, _ = run(capsys, "plan", "--model", src, "--memory-budget", "1GiB", "--out", str(path), "--json")
    assert code == 0
    data = json.loads(out)  # stdout is the JSON alone
    plan = Plan.load(path)
    assert data["totals"]["state_bytes"] == plan.totals.state_bytes
    code, out, _ = run(capsys, "show", str(path), "--json", "--per-tensor")
    rows = json.loads(out)["rows"]
    assert [r["name"] for r in rows] == [e.name for e in plan.tensors]
    for r, e in zip(rows, plan.tensors):
        c = e.config()
        assert r["method"] == c.method and r["state_bytes"] == e.state_bytes
        assert (f"k={c.rank}" in r["configuration"]) == (c.rank is not None)
    out_json = tmp_path / "show.json"
    code, out, _ = run(capsys, "show", str(path), "--json", str(out_json))
    assert code == 0 and json.loads(out_json.read_text())["view"] == "class" and "Plan per tensor" in out


def test_check_reports_the_model_it_was_given(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    assert run(capsys, "plan", "--model", "examples.models:mlp", "--memory-budget", "64MiB", "--out", str(path))[0] == 0
    report = tmp_path / "r.json"
    code, out, _ = run(capsys, "check", str(path), "--model", "examples.models:mlp_wide", "--json", str(report))
    assert code == 1
    assert "against examples.models:mlp_wide" in " ".join(out.split())
    assert json.loads(report.read_text())["model"] == "examples.models:mlp_wide"


def test_sharded_totals_are_labelled_per_rank(tmp_path):
    spec = load_spec(_shapes_file(tmp_path, 5))
    plan = make_plan(spec, None, world_size=4, parallelism="zero1")
    text = " ".join(_render(plan, 150).split())
    assert f"optimizer state (all ranks together) " in text
    assert "per rank (zero1, 4 ranks)" in text and "peak per rank" in text
    assert plan.totals.state_bytes_per_rank < plan.totals.state_bytes  # the two numbers the labels tell apart


def test_relaxed_budget_line_has_no_invented_time(tmp_path):
    spec = load_spec(_shapes_file(tmp_path, 6))
    top = make_plan(spec, None)
    plan = make_plan(spec, (top.totals.peak_bytes + min(w.peak_bytes for w in top.what_if)) // 2)
    assert plan.totals.step_ms is None and plan.solver.relax  # an untimed plan with a binding memory budget
    text = _render(plan, 150)
    line = next(ln for ln in text.splitlines() if "without the memory budget" in ln)
    assert " ms" not in line


def test_hf_dir_and_unknown_model_type(tmp_path, capsys):
    pytest.importorskip("transformers")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg_dir = os.path.join(root, "examples", "tiny-llama")
    code, out, err = run(capsys, "plan", "--model", f"hf:{cfg_dir}", "--memory-budget", "1GiB")
    assert code == 0, err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "plan", "--model", f"hf:{empty}", "--memory-budget", "1GiB")
    assert code == 2 and "config.json" in err
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "lama", "hidden_size": 64}))
    code, _, err = run(capsys, "plan", "--model", f"hf:{tmp_path}", "--memory-budget", "1GiB")
    assert code == 2 and len(err) < 400 and "llama" in err and "Traceback" not in err


def test_every_flag_has_help_with_its_default_and_the_presets_are_listed():
    p = _parser()
    subs = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices
    missing = []
    for name, sp in subs.items():
        for a in sp._actions:
            if not a.option_strings or a.dest == "help":
                continue
            takes_value = a.nargs != 0
            if not a.help or (takes_value and "default" not in a.help and not a.required):
                missing.append(f"{name} {a.option_strings[0]}")
    assert not missing, missing
    model_help = next(a.help for a in subs["plan"]._actions if a.dest == "model")
    assert all(name in model_help for name in PRESETS)


def test_profile_noise_flags_runs_that_disagree():
    from sketchplan.profiles.measure import NOISE_LIMIT, noise, noise_warning
    from sketchplan.profiles.schema import HardwareProfile, DeviceInfo, Roofline

    rng = random.Random(7)
    base = rng.uniform(1e-4, 1e-3)
    quiet = noise("gemm", "matmul", (512, 512, 512), [base, base * 1.1, base * 0.95], [0.5, 0.6])
    busy = noise("inv_root", "eigh", (64,), [base, base * 250, base * 1.2], [5.0, 6.0])
    assert not quiet.noisy and busy.noisy and busy.ratio == pytest.approx(250)
    prof = HardwareProfile(name="x", device=DeviceInfo(kind="cpu", name="cpu", framework="torch"),
                           roofline=Roofline(peak_flops=1e9, bandwidth=1e9, overhead_s=1e-6), noise=[quiet])
    assert noise_warning(prof) is None
    prof.noise.append(busy)
    msg = noise_warning(prof)
    assert "250.0×" in msg and f"{NOISE_LIMIT:g}×" in msg and "load average 5.0 → 6.0" in msg
    again = HardwareProfile.model_validate(yaml.safe_load(prof.to_yaml()))  # the flag survives the file
    assert again.noise[1].noisy


def test_plot_units_come_from_the_data_and_labels_do_not_overlap(tmp_path):
    """Three model sizes: each axis's unit is the largest binary unit in which the data is at least 1 (worked out
    here from the plan entries, apart from plot.py), at least two sizes get different units, and no two labels
    overlap."""
    pytest.importorskip("matplotlib")
    from sketchplan.plot import draw_plan, label_overlaps, plot_plan

    exps = {"B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}

    def unit_of(n: float) -> str:
        return next(u for u, e in sorted(exps.items(), key=lambda kv: -kv[1]) if n >= 2**e or e == 0)

    units = set()
    for spec_name, budget in (("examples.models:mlp", "2MiB"), ("gpt2", "4GiB"), ("llama-7b", "80GiB")):
        spec = load_spec(spec_name)
        plan = make_plan(spec, budget, source=spec_name)
        per: dict[str, int] = {}
        for e in plan.tensors:  # the bars: state summed per first index in the name, the rest under "other"
            m = re.search(r"(?:^|[./])(\d+)(?=[./])", e.name)
            key = m.group(1) if m else "other"
            per[key] = per.get(key, 0) + e.state_bytes
        fig = draw_plan(plan, spec if spec_name == "examples.models:mlp" else None, points=4)
        left, right = fig.axes[:2]
        assert left.get_ylabel() == f"optimizer state ({unit_of(max(per.values()))})", spec_name
        budget_bytes = plan.budget.memory_bytes - plan.budget.reserve_bytes
        xmax = max([w.peak_bytes for w in plan.what_if] + [plan.totals.peak_bytes, budget_bytes])
        if spec_name == "examples.models:mlp":
            from sketchplan.plot import frontier

            xmax = max([xmax] + [b for b, _ in frontier(plan, spec, 4)])
        assert right.get_xlabel() == f"predicted peak memory ({unit_of(xmax)})", spec_name
        units.add(unit_of(max(per.values())))
        assert label_overlaps(fig) == [], spec_name
        import matplotlib.pyplot as plt

        plt.close(fig)
        png = tmp_path / f"{spec_name.replace(':', '_')}.png"
        plot_plan(plan, str(png))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(units) >= 2, units
