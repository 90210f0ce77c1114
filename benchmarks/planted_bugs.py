"""Planted bugs: does the test suite catch them? (issue "Tests that catch bugs").

Each plant is a one-line change a plausible mistake would make, applied to a temporary copy of ``src/``; the
suite's relevant test files then run against the copy (``-x``: the first failure is enough). A plant that no test
fails on is reported as missed. Writes ``benchmarks/results/planted_bugs.md``.

Run: ``python benchmarks/planted_bugs.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (what, file under src/sketchplan, old text, new text, test files that should catch it)
PLANTS = [
    ("Adam's second moment ignores state_dtype", "methods/adam.py",
     'StateTensor("exp_avg_sq", tuple(shape), opts.state_dtype)', 'StateTensor("exp_avg_sq", tuple(shape), "float32")',
     ["tests/test_memory_expectations.py", "tests/test_layouts.py"]),
    ("the plan loader uses an unsafe YAML loader", "files.py",
     "yaml.load(p.read_text(), Loader=_Loader)", "yaml.unsafe_load(p.read_text())",
     ["tests/test_check.py"]),
    ("check's tolerance scaled 10×", "planner/check.py",
     "new > old * (1 + tol_pct / 100.0)", "new > old * (1 + tol_pct / 10.0)", ["tests/test_check.py"]),
    ("check's per-tensor growth check dropped", "planner/check.py",
     'offending = status in ("reshaped", "now-frozen", "now-trainable") or _grew(e.state_bytes, new, tol_pct)',
     'offending = status in ("reshaped", "now-frozen", "now-trainable")', ["tests/test_check.py"]),
    ("FD update: ρ not decayed", "kernels/torch/frequent_directions.py",
     "new_sig2, beta2 * rho + c", "new_sig2, rho + c", ["tests/test_kernels.py"]),
    ("FD update: no shrink step", "kernels/torch/frequent_directions.py",
     "new_sig2 = (w[..., :k] - c.unsqueeze(-1)).clamp_min(0)", "new_sig2 = w[..., :k]", ["tests/test_kernels.py"]),
    ("greedy solver takes the worst value per byte first", "planner/solve.py",
     "incs.sort(key=lambda t: (t[0], t[1], t[2]))", "incs.sort(key=lambda t: (-t[0], t[1], t[2]))",
     ["tests/test_solver.py"]),
    ("Plan.load accepts an entry whose method misses its option", "planner/plan.py",
     "                self.config()\n", "                pass\n", ["tests/test_check.py"]),
    ("Shampoo's root exponent −1/k instead of −1/(2k)", "optimizers/torch/shampoo.py",
     "new = symmetric_power(stat, -1.0 / (2 * order)", "new = symmetric_power(stat, -1.0 / order",
     ["tests/test_equivalences.py"]),
    ("merging allows a product above merge_dims", "methods/blocking.py",
     "if cur * d <= merge_dims:", "if cur * d <= 2 * merge_dims:", ["tests/test_layouts.py"]),
]


def run_plant(src: Path, what, rel, old, new, tests) -> tuple[str, str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        target = copy / "sketchplan" / rel
        text = target.read_text()
        if old not in text:  # (the control run plants nothing: old == "")
            return "not planted (text not found)", "", 0.0
        target.write_text(text.replace(old, new, 1))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), str(ROOT)]))
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        secs = time.perf_counter() - t
        failed = [line.split(" ")[1] for line in r.stdout.splitlines() if line.startswith("FAILED ")]
        if r.returncode == 0:
            return "MISSED", "", secs
        return ("caught" if failed else f"error (exit {r.returncode})"), (failed[0] if failed else ""), secs


def main() -> None:
    every_test = sorted({t for *_, tests in PLANTS for t in tests})
    control, _, _ = run_plant(ROOT / "src", "control", "methods/adam.py", "", "", every_test)
    if control != "MISSED":
        raise SystemExit(f"the unplanted suite fails ({control}); fix it before planting bugs")
    rows = []
    for what, rel, old, new, tests in PLANTS:
        verdict, by, secs = run_plant(ROOT / "src", what, rel, old, new, tests)
        rows.append((what, rel, verdict, by, secs))
        print(f"{verdict:8s} {what} ({by})", flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    lines = ["# Planted bugs", "", f"`python benchmarks/planted_bugs.py`; load average {load}.", "",
             "The unplanted suite passes the same test files (control run) before any bug is planted.", "",
             "| planted bug | file | verdict | first failing test |", "|---|---|---|---|"]
    lines += [f"| {w} | `{r}` | {v} | `{b}` |" for w, r, v, b, _ in rows]
    caught = sum(v == "caught" for _, _, v, _, _ in rows)
    lines += ["", f"{caught} of {len(rows)} caught."]
    out = ROOT / "benchmarks" / "results" / "planted_bugs.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
