"""Mutation testing of the core modules with mutmut (not in CI: about an hour on 2 shared cores).

Run: ``python benchmarks/mutation.py [--max-children N] [MUTANT_PATTERN ...]`` from the repository root, with
mutmut 3 installed (``pip install 'sketchplan[mutation]'``). mutmut copies the package to ``mutants/``, mutates
``[tool.mutmut] source_paths`` (pyproject.toml) and runs, for each mutant, only those tests of
``pytest_add_cli_args_test_selection`` that executed the mutated function in its first, traced run (the fast
tests that exercise ``methods/``), so a mutant takes seconds. The run is started with ``nice -n 19`` (the cores
are shared) and with ``SKETCHPLAN_TEST_SEED`` fixed, so the randomised replay tests draw the same shapes for
every mutant and a verdict is reproducible. A second run resumes: checked mutants keep their verdict; name
mutants (glob patterns such as ``'sketchplan.methods.soap.x_kernel_calls*'``) to check them again after adding
tests. The editable install's path entry is dropped first so the tests import the mutated copy.

Writes ``benchmarks/results/mutation.md``: the counts by status, the score, the equivalent mutants (``EQUIVALENT``
below, each with why no test can tell it from the original) and every other survivor, grouped by function.
Anything after the line ``<!-- notes -->`` in the existing file (the hand-written notes) is kept.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "mutation.md"
NOTES = "<!-- notes -->"
SHIM = ("import sys; sys.path = [p for p in sys.path if not p.endswith('/src')]; "
        "sys.argv = ['mutmut'] + sys.argv[1:]; from mutmut.__main__ import cli; cli()")
CAUGHT = ("killed", "timeout")

#: Mutants no test can distinguish from the original, with the reason (read with ``mutmut show NAME``).
EQUIVALENT: dict[str, str] = {}


def mutmut(*args: str, nice: bool = False, **kw) -> subprocess.CompletedProcess:
    cmd = (["nice", "-n", "19"] if nice else []) + [sys.executable, "-c", SHIM, *args]
    env = dict(os.environ, SKETCHPLAN_TEST_SEED=os.environ.get("SKETCHPLAN_TEST_SEED", "1"))
    return subprocess.run(cmd, cwd=ROOT, text=True, env=env, **kw)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def report(out: str, header: str) -> str:
    status: collections.Counter = collections.Counter()
    survivors: dict[str, list[str]] = collections.defaultdict(list)
    equivalent = []
    for line in out.splitlines():
        if ": " not in line:
            continue
        name, state = line.strip().rsplit(": ", 1)
        if state == "survived" and name in EQUIVALENT:
            equivalent.append(name)
            state = "equivalent"
        status[state] += 1
        if state in ("survived", "no tests"):
            survivors[name.split("__mutmut_")[0]].append(f"{name.split('__mutmut_')[1]}{'' if state == 'survived' else ' (no tests)'}")
    checked = sum(n for s, n in status.items() if s not in ("not checked", "equivalent"))
    caught = sum(status[s] for s in CAUGHT)
    lines = ["# Mutation testing", "", header, "",
             "| status | mutants |", "|---|---|"] + [f"| {s} | {n} |" for s, n in sorted(status.items())]
    lines += ["", f"**Score: {caught} of {checked} checked mutants killed or timed out "
              f"({100 * caught / max(checked, 1):.1f}%)**, equivalent mutants left out of both counts; "
              f"{status['not checked']} not checked. (\"no tests\": no selected test runs the function.)", ""]
    lines += ["## Equivalent mutants", "", "| mutant | why no test can see it |", "|---|---|"]
    lines += [f"| `{n}` | {EQUIVALENT[n]} |" for n in sorted(equivalent)] or ["| (none) | |"]
    lines += ["", "## Surviving mutants by function", "", "| function | surviving mutants (numbers) |", "|---|---|"]
    for f, ns in sorted(survivors.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"| `{f}` ({len(ns)}) | {', '.join(sorted(ns, key=lambda s: int(s.split()[0])))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-children", default="2")
    ap.add_argument("--report-only", action="store_true", help="summarise the last run without running")
    ap.add_argument("mutants", nargs="*", help="mutant names or glob patterns to (re)check; default: all unchecked")
    args = ap.parse_args()
    run_note = "summary of the stored results"
    if not args.report_only:
        before, t0 = uptime(), time.monotonic()
        mutmut("run", "--max-children", args.max_children, *args.mutants, nice=True)
        run_note = (f"this run took {time.monotonic() - t0:.0f} s; `uptime` before: {before}; after: {uptime()}")
    out = mutmut("results", "--all", "true", capture_output=True).stdout
    header = (f"`python benchmarks/mutation.py`: mutmut on `[tool.mutmut] source_paths` (pyproject.toml) with the "
              f"selected fast tests; {run_note}.")
    text = report(out, header)
    if RESULT.exists() and NOTES in RESULT.read_text():
        text += "\n" + RESULT.read_text()[RESULT.read_text().index(NOTES):]
    RESULT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
