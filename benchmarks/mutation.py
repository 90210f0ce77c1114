"""Mutation testing of the core modules with mutmut (not in CI: it takes hours on 2 cores).

Run: ``python benchmarks/mutation.py [--max-children N]`` from the repository root, with mutmut installed
(``pip install mutmut``). mutmut copies the package to ``mutants/``, mutates ``[tool.mutmut] paths_to_mutate``
(pyproject.toml) and runs, for each mutant, the tests that cover the mutated function. The editable install's
path entry is dropped first so the tests import the mutated copy. Writes ``benchmarks/results/mutation.md``:
the score (killed or timed out, over checked) and every surviving mutant, grouped by function.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIM = ("import sys; sys.path = [p for p in sys.path if not p.endswith('/src')]; "
        "sys.argv = ['mutmut'] + sys.argv[1:]; from mutmut.__main__ import cli; cli()")


def mutmut(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SHIM, *args], cwd=ROOT, text=True, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-children", default="2")
    ap.add_argument("--report-only", action="store_true", help="summarise the last run without running")
    args = ap.parse_args()
    if not args.report_only:
        mutmut("run", "--max-children", args.max_children)
    out = mutmut("results", "--all", "true", capture_output=True).stdout
    status = collections.Counter()
    survivors = collections.Counter()
    for line in out.splitlines():
        if ": " not in line:
            continue
        name, state = line.strip().rsplit(": ", 1)
        status[state] += 1
        if state == "survived":
            survivors[name.split("__mutmut_")[0]] += 1
    checked = sum(n for s, n in status.items() if s != "not checked")
    caught = status["killed"] + status["timeout"]
    lines = ["# Mutation testing", "", f"`python benchmarks/mutation.py`; mutmut on `[tool.mutmut] paths_to_mutate`; load average "
             f"{os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}.", "",
             "| status | mutants |", "|---|---|"] + [f"| {s} | {n} |" for s, n in sorted(status.items())]
    lines += ["", f"Score: {caught} of {checked} checked mutants killed or timed out "
              f"({100 * caught / max(checked, 1):.1f}%).", "", "Survivors by function:", "",
              "| function | surviving mutants |", "|---|---|"]
    lines += [f"| `{f}` | {n} |" for f, n in survivors.most_common()]
    (ROOT / "benchmarks" / "results" / "mutation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
