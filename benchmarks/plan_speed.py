"""Planning speed: planning time (model construction excluded) and whole-CLI time, full default grid.

Run: ``python benchmarks/plan_speed.py [--baseline REV]`` — prints markdown tables and writes
benchmarks/results/plan_speed.md. Whole-CLI time is measured twice: with the preset cache cold (transformers
imported and the model built on the meta device) and warm (the analysed spec read from the cache). Medians of
``REPS`` runs.

The second table compares the warm whole-CLI time of this checkout with an earlier version of sketchplan
(``--baseline``, a git revision; default ``541d307``, the version before issue 12's planning speed-up), exported
with ``git archive`` into a temporary folder and run from the same virtualenv. The two versions run in
interleaved rounds (``ROUNDS``), so machine load hits both alike; the table gives min/median/max of the wall time
and of the process's CPU time (user + sys, which a loaded machine inflates less than wall time), the ratios of
medians, and the load average before and after.

The CLI processes run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` removed from their environment), as an
installed package has it: the first, untimed run of each case writes the ``.pyc`` files; with the variable set
(as in some development shells) every run recompiles sketchplan's modules from source, ~0.06 s more.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sketchplan.planner import make_plan
from sketchplan.planner.sources import load_spec

CASES = [("gpt2", "4GiB"), ("llama-7b", "80GiB"), ("llama-70b", "640GiB")]
REPS = 3
ROUNDS = 7
ROOT = Path(__file__).resolve().parent.parent
#: A llama-7b-shaped shapes file (one decoder layer's tensors × 32 and the embeddings), for the shapes-file row.
SHAPES = "params:\n" + "".join(
    f"  - {{name: layers.{i}.{n}, shape: {list(sh)}}}\n" for i in range(32)
    for n, sh in [("q", (4096, 4096)), ("k", (4096, 4096)), ("v", (4096, 4096)), ("o", (4096, 4096)),
                  ("up", (11008, 4096)), ("gate", (11008, 4096)), ("down", (4096, 11008)), ("norm", (4096,))]
) + "  - {name: embed, shape: [32000, 4096]}\n  - {name: head, shape: [32000, 4096]}\n"


def _load() -> str:
    return "(" + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + ")" if hasattr(os, "getloadavg") else "n/a"


def compare(baseline: str) -> str:
    """Interleaved warm whole-CLI runs of this checkout and of ``baseline`` (module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "baseline"
        wt.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", baseline], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(wt)], input=archive.stdout, check=True)
        shapes = Path(tmp) / "llama7b-shapes.yaml"
        shapes.write_text(SHAPES)
        cache = Path(tmp) / "cache"
        envs = {"this checkout": _env(SKETCHPLAN_CACHE=str(cache), PYTHONPATH=str(ROOT / "src")),
                f"baseline {baseline}": _env(SKETCHPLAN_CACHE=str(cache) + "-base", PYTHONPATH=str(wt / "src"))}
        cases = [(str(ROOT / "examples" / "shapes.yaml"), "1GiB", "shapes file (examples/shapes.yaml)"),
                 (str(shapes), "80GiB", "shapes file (llama-7b shapes)"), ("gpt2", "4GiB", "preset gpt2, cached"),
                 ("llama-70b", "640GiB", "preset llama-70b, cached")]

        def run(env, model, budget) -> tuple[float, float]:
            """Wall seconds and CPU seconds (user + sys) of one CLI process."""
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            # a real file: an older sketchplan replaces an output atomically, which would replace /dev/null
            subprocess.run([sys.executable, "-m", "sketchplan", "plan", "--model", model, "--memory-budget",
                            budget, "--out", str(Path(tmp) / "plan.yaml")], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

        for env in envs.values():  # fill both preset caches
            for model, budget, _ in cases:
                run(env, model, budget)
        load_before = _load()
        times = {(v, c[2]): [] for v in envs for c in cases}
        for _ in range(ROUNDS):
            for model, budget, label in cases:
                for v, env in envs.items():
                    times[(v, label)].append(run(env, model, budget))
        load_after = _load()
    names = list(envs)
    lines = [f"Warm whole-CLI time, this checkout vs {baseline}, {ROUNDS} interleaved rounds; load average "
             f"{load_before} before, {load_after} after (1, 5, 15 minutes; {os.cpu_count()} cores, shared with "
             "other users: wall times above ~1.0 load per core include waiting for a core, CPU times less so).\n",
             "| model | wall, this checkout min / median / max (s) | wall, baseline min / median / max (s) | "
             "wall ratio of medians | CPU, this checkout min / median / max (s) | CPU, baseline min / median / "
             "max (s) | CPU ratio of medians |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda x: f"{min(x):.2f} / {statistics.median(x):.2f} / {max(x):.2f}"  # noqa: E731
    for _, _, label in cases:
        a, b = times[(names[0], label)], times[(names[1], label)]
        wa, wb = [w for w, _ in a], [w for w, _ in b]
        ca, cb = [c for _, c in a], [c for _, c in b]
        lines.append(f"| {label} | {fmt(wa)} | {fmt(wb)} | {statistics.median(wa) / statistics.median(wb):.2f} | "
                     f"{fmt(ca)} | {fmt(cb)} | {statistics.median(ca) / statistics.median(cb):.2f} |")
    verdict = ", ".join(f"{label}: {'yes' if statistics.median([w for w, _ in times[(names[0], label)]]) <= 1.0 else 'no'}"
                        for _, _, label in cases)
    lines.append(f"\nThis checkout's median warm wall time ≤ 1.0 s (issue 12) at this load: {verdict}.")
    return "\n".join(lines) + "\n"


def _env(**extra: str) -> dict[str, str]:
    """The CLI processes' environment: this one with ``extra``, bytecode caching on (module docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env | extra


def cli_seconds(model: str, budget: str, env: dict) -> float:
    times = []
    for _ in range(REPS):
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:  # a real file: outputs are regular files (never /dev/null)
            subprocess.run([sys.executable, "-m", "sketchplan", "plan", "--model", model, "--memory-budget", budget,
                            "--out", os.path.join(tmp, "plan.yaml")], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="541d307", help="git revision to compare with (default 541d307)")
    ap.add_argument("--skip-table", action="store_true", help="only the comparison with the baseline")
    args = ap.parse_args()
    comparison = compare(args.baseline)
    print(comparison)
    if args.skip_table:
        out = Path(__file__).parent / "results" / "plan_speed.md"
        old = out.read_text().split("\n## This checkout vs")[0] if out.exists() else "# Planning speed\n"
        out.write_text(old.rstrip() + "\n\n## This checkout vs an earlier version\n\n" + comparison)
        return
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        warm_env = _env(SKETCHPLAN_CACHE=cache)
        cold_env = _env(SKETCHPLAN_NO_CACHE="1")
        for model, budget in CASES:
            spec = load_spec(model)
            plan_times = []
            for _ in range(REPS):
                t = time.perf_counter()
                plan = make_plan(spec, budget, source=model)
                plan_times.append(time.perf_counter() - t)
            cold = cli_seconds(model, budget, cold_env)
            cli_seconds(model, budget, warm_env)  # fill the cache
            warm = cli_seconds(model, budget, warm_env)
            rows.append((model, budget, len(spec.params), len({p.shape for p in spec.trainable}),
                         statistics.median(plan_times), cold, warm, plan.solver.status, plan.solver.gap))
    head = (f"Measured on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; medians of {REPS} runs. Planning: ``make_plan`` called {REPS} times in "
            "one process (the memos are warm after the first call); whole CLI: fresh processes.\n\n")
    table = ["| model | budget | tensors | distinct shapes | planning (s) | whole CLI, cold cache (s) | "
             "whole CLI, warm cache (s) | solver | gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, b, n, d, p, c, w, st, gap in rows:
        table.append(f"| {m} | {b} | {n} | {d} | {p:.3f} | {c:.2f} | {w:.2f} | {st} | {gap:.1e} |")
    text = head + "\n".join(table) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "plan_speed.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Planning speed\n\n" + text + "\n## This checkout vs an earlier version\n\n" + comparison)


if __name__ == "__main__":
    main()
