"""Planning speed: planning time (model construction excluded) and whole-CLI time, full default grid.

Run: ``python benchmarks/plan_speed.py`` — prints a markdown table and writes benchmarks/results/plan_speed.md.
Whole-CLI time is measured twice: with the preset cache cold (transformers imported and the model built on the
meta device) and warm (the analysed spec read from the cache). Medians of ``REPS`` runs.
"""

from __future__ import annotations

import os
import platform
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
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        warm_env = dict(os.environ, SKETCHPLAN_CACHE=cache)
        cold_env = dict(os.environ, SKETCHPLAN_NO_CACHE="1")
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
            f"Python {platform.python_version()}; medians of {REPS} runs.\n\n")
    table = ["| model | budget | tensors | distinct shapes | planning (s) | whole CLI, cold cache (s) | "
             "whole CLI, warm cache (s) | solver | gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, b, n, d, p, c, w, st, gap in rows:
        table.append(f"| {m} | {b} | {n} | {d} | {p:.3f} | {c:.2f} | {w:.2f} | {st} | {gap:.1e} |")
    text = head + "\n".join(table) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "plan_speed.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Planning speed\n\n" + text)


if __name__ == "__main__":
    main()
