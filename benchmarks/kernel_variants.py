"""Kernel variants per shape: measured time of every FD-update and inverse-root variant vs the profile's pick.

Run: ``python benchmarks/kernel_variants.py PROFILE.yaml`` — prints a markdown table and writes
benchmarks/results/kernel_variants.md.

Shapes: Sketchy's FD updates on GPT-2's axes (768, 2304, 3072 wide, the other axis as new columns) at ranks 64
and 256, three shapes between the profile's grid points, and Shampoo's inverse roots of d × d statistics.
Each variant is timed with the profiling harness (warm-up, ≥ 3 repetitions, median) on fresh random inputs,
with the profile's thread count. To keep the run short, a variant the profile predicts to be more than
``SKIP_FACTOR`` times slower than its pick is not run (shown as "skipped"); the pick's ratio to the fastest
*measured* variant is the figure of merit (goal ≤ 1.10).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sketchplan.kernels.calls import KERNEL_VARIANTS, PLANNED_VARIANTS, KernelCall
from sketchplan.kernels.timing import median_seconds, torch_runner
from sketchplan.profiles import CostModel, HardwareProfile
from sketchplan.profiles.measure import _torch_problem

SKIP_FACTOR = 8.0
OUT = Path(__file__).parent / "results" / "kernel_variants.md"
FD_SHAPES = [(d, k, n) for k in (64, 256) for d, n in ((768, 768), (768, 2304), (2304, 768), (768, 3072),
                                                      (3072, 768))]
FD_SHAPES += [(512, 128, 1536), (1536, 32, 384), (384, 32, 1536)]
FD_SHAPES += [(1024, 256, 768), (768, 256, 1024), (768, 256, 256), (768, 256, 1)]  # blocks of 1024, a vector
ROOT_SHAPES = [(d,) for d in (64, 128, 200, 256, 512, 768, 1024, 1536)]


def row(cost: CostModel, kernel: str, dims: tuple[int, ...]) -> tuple[str, float]:
    call = KernelCall(kernel, dims)
    _, picks = cost.step([call])
    pick = picks.get(kernel, KERNEL_VARIANTS[kernel][0])
    pred = {v: cost.call(call, v).seconds for v in cost.variants(kernel)}
    times: dict[str, float | None] = {}
    for v in KERNEL_VARIANTS[kernel]:
        if v in pred and pred[v] > SKIP_FACTOR * pred[pick]:
            times[v] = None
            continue
        fn, check = _torch_problem(kernel, v, dims, "cpu")
        t, _ = median_seconds(torch_runner(fn, "cpu"), warmup=1, min_reps=3, max_reps=7, budget_s=0.3)
        times[v] = t if check() else None
    # the planner chooses among the accurate variants only (``PLANNED_VARIANTS``: the Gram ones square the
    # conditioning); they are timed for reference
    allowed = PLANNED_VARIANTS.get(kernel, KERNEL_VARIANTS[kernel])
    measured = {v: t for v, t in times.items() if t is not None and v in allowed}
    fastest = min(measured, key=measured.get)
    ratio = measured[pick] / measured[fastest] if pick in measured else float("nan")
    cells = " | ".join("skipped" if times[v] is None else f"{times[v] * 1e3:,.1f}" for v in KERNEL_VARIANTS[kernel])
    text = f"| {kernel} | {'×'.join(map(str, dims))} | {cells} | {fastest} | {pick} | {ratio:.2f} |"
    print(text, flush=True)
    return text, ratio


def main() -> None:
    profile = HardwareProfile.load(sys.argv[1])
    if profile.device.kind == "cpu" and profile.device.cores:
        torch.set_num_threads(profile.device.cores)
    cost = CostModel(profile)
    out = ["# Kernel variants: measured time per shape vs the profile's pick", "",
           f"Profile `{profile.name}` ({profile.device.name}, {profile.device.cores} thread(s)). Times in ms "
           f"(median, ≥ 3 repetitions after warm-up); 'skipped': predicted > {SKIP_FACTOR:g}× the pick; ratio = "
           "pick / fastest measured among the variants the planner may pick (goal ≤ 1.10; FD: "
           f"{', '.join(PLANNED_VARIANTS['fd_update'])} — the Gram variants square the conditioning and are timed "
           "for reference only). FD dims are d×k×N (sketch size, rank, new columns); roots d.", ""]
    ratios = []
    for kernel, shapes in (("fd_update", FD_SHAPES), ("inv_root", ROOT_SHAPES)):
        vs = KERNEL_VARIANTS[kernel]
        out += [f"| kernel | dims | {' | '.join(vs)} | fastest | pick | ratio |",
                "|---|---|" + "---:|" * len(vs) + "---|---|---:|"]
        for dims in shapes:
            text, ratio = row(cost, kernel, dims)
            out.append(text)
            ratios.append(ratio)
        out.append("")
    within = sum(r <= 1.10 for r in ratios)
    out.append(f"pick within 10% of the fastest measured variant for {within} of {len(ratios)} shapes; "
               f"worst ratio {max(ratios):.2f}.")
    print(out[-1])
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
