"""Sketchy's FD variant and step skipping on the char-LM of ``benchmarks/quality.py``: validation loss per seed.

Rows: Sketchy k ∈ {16, 64} with the exact FD update (``svd``, the paper's definition) and with the approximate
``subspace`` variant (``kernels.torch.frequent_directions``); Sketchy k = 64 (exact) with ``stats_every`` ∈
{1, 2, 5, 10}. Same model, data, schedule, learning rate (2e-3, the best of quality.py's sweep for every Sketchy
row) and seeds for every row, so a row's difference from its reference is the variant's (or the skipping's) effect.

Usage: PYTHONPATH=src python benchmarks/fd_variant_quality.py [--seeds 3] [--steps 150]
Writes benchmarks/results/fd_variant_quality.md (with the load average before and after: the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import quality  # noqa: E402
from sketchplan.methods import MethodConfig  # noqa: E402

LR = 2e-3


def configs() -> dict[str, tuple[int, dict]]:
    """row name → (rank, optimizer options)."""
    rows = {}
    for k in (16, 64):
        rows[f"Sketchy k={k}, exact FD (svd)"] = (k, {"fd_variant": "svd"})
        rows[f"Sketchy k={k}, subspace FD"] = (k, {"fd_variant": "subspace"})
    for every in (2, 5, 10):
        rows[f"Sketchy k=64, exact FD, stats_every={every}"] = (64, {"fd_variant": "svd", "stats_every": every})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--only", default="", help="comma-separated row-name substrings")
    args = ap.parse_args()
    torch.set_num_threads(1)
    quality.STEPS["lm"] = args.steps
    task = quality.lm_task()
    load_before = os.getloadavg()
    start = time.time()
    results: dict[str, list[quality.Run]] = {}
    for name, (k, opts) in configs().items():
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        cfg = MethodConfig(method="sketchy", rank=k, graft="adam", momentum="float32")
        make = quality._ours(cfg, task, **opts)
        results[name] = [quality.train(task, make, LR, seed) for seed in range(args.seeds)]
        vals = [r.val for r in results[name]]
        print(f"{name}: val {vals}, step ms {[round(r.step_ms, 1) for r in results[name]]}", flush=True)
    load_after = os.getloadavg()

    def ref_of(name: str) -> str | None:
        if "subspace" in name:
            return name.replace("subspace FD", "exact FD (svd)")
        if "stats_every" in name:
            return "Sketchy k=64, exact FD (svd)"
        return None

    lines = [
        f"Char-LM of `benchmarks/quality.py` (CharLM d=128, 2 layers, {args.steps} steps, batch {quality.LM_BATCH}, "
        f"lr {LR}, cosine schedule), Sketchy with Adam grafting; {args.seeds} seeds per row (seed s: same init and "
        f"batches for every row). torch {torch.__version__}, 1 thread. Wall time {time.time() - start:.0f} s; load "
        f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after (a shared 2-core machine: step times are "
        "noisy, losses are not).",
        "",
        "| row | validation loss per seed | mean | × reference's mean | max per-seed diff vs reference | "
        "optimizer.step() median ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        vals = [r.val for r in runs]
        mean = statistics.fmean(vals)
        ref = ref_of(name)
        if ref in results:
            rv = [r.val for r in results[ref]]
            ratio = f"{mean / statistics.fmean(rv):.4f}"
            diff = f"{max(abs(a - b) / b for a, b in zip(vals, rv)) * 100:.2f} %"
        else:
            ratio, diff = "(reference)", ""
        step = statistics.median(r.step_ms for r in runs)
        lines.append(f"| {name} | {', '.join(f'{v:.4f}' for v in vals)} | {mean:.4f} | {ratio} | {diff} | "
                     f"{step:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "fd_variant_quality.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
