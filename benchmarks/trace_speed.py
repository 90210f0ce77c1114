"""How long and how much RAM the fake-tensor activation trace of a 7B-class preset takes (issue 13).

Run: ``PYTHONPATH=src:. python benchmarks/trace_speed.py`` — writes benchmarks/results/trace_speed.md.

Each round is a fresh process that builds ``llama-7b`` on the meta device and calls
``planner.activations.trace_source("llama-7b", 8, 2048)``: one forward and backward under fake tensors, twice
(without and with activation checkpointing). Reported: the trace's wall time inside the process (after imports
and the preset build), the whole process's wall time, and its peak resident memory (``ru_maxrss`` of the child).
``ROUNDS`` rounds; min / median / max.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "trace_speed.md"
ROUNDS = 3
CHILD = """
import json, time
t0 = time.perf_counter()
from sketchplan.planner.activations import trace_source, trace_activations, preset_inputs
from sketchplan.planner.sources import load_model
m = load_model("llama-7b", module=True)
t1 = time.perf_counter()
info = trace_activations(m, preset_inputs(m, 8, 2048))
t2 = time.perf_counter()
print(json.dumps({"trace_s": t2 - t1, "build_s": t1 - t0, "peak": info.peak_bytes,
                  "ckpt": info.checkpointed_peak_bytes}))
"""


def main() -> None:
    rows = []
    for _ in range(ROUNDS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                             env={**os.environ, "SKETCHPLAN_NO_CACHE": "1"})
        wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children so far
        data = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({**data, "wall_s": wall, "rss_gib": max(rss, before) / 2**20})
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    def stat(key):
        v = [r[key] for r in rows]
        return f"{min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}"

    r = rows[0]
    text = [f"# Fake-tensor trace of llama-7b at batch 8 × 2048 ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)",
            "", f"Load: `{load}`", "",
            f"Traced forward+backward high-water mark: {r['peak'] / 2**30:.1f} GiB (float32 parameters, no "
            f"checkpointing); with activation checkpointing: {r['ckpt'] / 2**30:.1f} GiB.", "",
            f"| quantity ({ROUNDS} rounds, fresh processes) | min / median / max |", "|---|---|",
            f"| trace, both ways (s) | {stat('trace_s')} |", f"| preset build incl. imports (s) | {stat('build_s')} |",
            f"| whole process (s) | {stat('wall_s')} |",
            f"| peak resident memory (GiB; max over the rounds so far) | {stat('rss_gib')} |", ""]
    OUT.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
