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
_INT = "`//` → `/` inside a `gemm`/`pointwise` argument: the constructors take `int()`, and int(a / b) = a // b for positive sizes"
_NEST = "`False` → `None` for `nesterov`: both falsy, and `momentum_update_calls` only tests its truth"
_NAMES = "state names have one dot and end in a digit (`blocks{g}.<what>{i}`), so this split/strip gives the same `<what>`"
EQUIVALENT: dict[str, str] = {
    "sketchplan.methods.lion.x_kernel_calls__mutmut_22": _NEST,
    "sketchplan.methods.adafactor.x_kernel_calls__mutmut_50": _NEST,
    "sketchplan.methods.compression.x_dynamic_code__mutmut_59": "padding value 0 → 1: the code already has 256 values before padding "
    "(signed 2·Σ2^i + 2, unsigned Σ2^(i+1) + 2), so nothing is padded",
    "sketchplan.methods.packing.x_unpack_calls__mutmut_9": _INT,
    "sketchplan.methods.kradagrad.x_kernel_calls__mutmut_36": _INT,
    "sketchplan.methods.soap.x_kernel_calls__mutmut_56": _INT,
    "sketchplan.methods.soap.x_kernel_calls__mutmut_85": _INT,
    "sketchplan.methods.soap.x_kernel_calls__mutmut_107": _INT,
    "sketchplan.methods.shampoo.x_kernel_calls__mutmut_42": _INT,
    "sketchplan.methods.shampoo.x_apply_roots_calls__mutmut_21": _INT,
    "sketchplan.methods.step_calls.x_matrix_frame_calls__mutmut_38": _INT,
    "sketchplan.methods.placement.x_block_group__mutmut_3": "`index` → `rindex` of the dot: block tensor names have exactly one dot",
    "sketchplan.methods.placement.x_local_shape__mutmut_3": "`shards <= 1` → `< 1`: with one shard `chunk_rows(d, 1, 0)` = d, the "
    "whole shape either way",
    "sketchplan.methods.extreme_tensoring.x_split_axis__mutmut_10": "`max_dim <= 1` → `<= 2`: for max_dim 2 the first m = "
    "⌈log2 d⌉ already has a bin per prime (a prime is ≥ 2), so the search returns the primes too",
    "sketchplan.methods.extreme_tensoring.x_split_axis__mutmut_42": "`m >= len(primes)` → `>`: at m = len(primes) every prime has "
    "its own bin, so the other test (`b in primes`) already holds",
    "sketchplan.methods.extreme_tensoring.x_tensor_dims__mutmut_6": "`numel <= 1` → `< 1`: numel 1 means every axis is 1, all "
    "dropped, and the fallback `(1,)` is the same answer",
    "sketchplan.methods.extreme_tensoring.x_tensor_dims__mutmut_7": "`numel <= 1` → `<= 2`: numel 2 is one axis of 2, which "
    "`split_axis` keeps whole for every max_dim",
    "sketchplan.methods.extreme_tensoring.x_tensor_dims__mutmut_19": "fallback `(1,)` → `(2,)`: unreachable (no dims left means "
    "numel ≤ 1, returned earlier)",
    "sketchplan.methods.packing.x_is_packed_name__mutmut_10": _NAMES,
    "sketchplan.methods.packing.x_is_packed_name__mutmut_11": _NAMES,
    "sketchplan.methods.packing.x_is_packed_name__mutmut_13": _NAMES,
    "sketchplan.methods.packing.x_is_packed_name__mutmut_15": _NAMES,
    "sketchplan.methods.packing.x_changed_names__mutmut_8": "`out += stats` → `out = stats`: `out` is still the empty tuple there",
    "sketchplan.methods.blocking.x_matrix_plan__mutmut_5": "`batch` computed as ∏ shape[:0] = 1 without batch axes: the same 1",
    "sketchplan.methods.blocking.x_matrix_plan__mutmut_29": "`merged_shape(shape[batch_dims:])` also without batch "
    "axes: shape[0:] is the shape",
    "sketchplan.methods.blocking.x_matrix_plan__mutmut_7": "`batch` = 2 without batch axes: `batched` needs batch_dims > 0, so it "
    "is never read",
    "sketchplan.methods.extreme_tensoring.x_workspace_bytes__mutmut_3": "default `scratch=False`: extreme tensoring calls no kernel "
    "with internal scratch, so the flag changes nothing",
    "sketchplan.methods.extreme_tensoring.x_workspace_bytes__mutmut_16": "`Live(None)`: as above, no scratch is ever "
    "added",
    **{f"sketchplan.methods.transients.x_replayed__mutmut_{i}": "`replayed` is a decorator: it runs when the module "
       "is imported, and mutmut forks every mutant's session from a process that imported the original code, so the "
       "mutant is never active where it could act" for i in (1, 2)},
    **{f"sketchplan.methods.transients.xǁLiveǁisfinite__mutmut_{i}": "dead code: `Live.isfinite` has no caller in "
       "src/ (no replay calls it), so no run executes the mutant" for i in range(1, 5)},
}


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
        if state in ("survived", "no tests") and name in EQUIVALENT:
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
