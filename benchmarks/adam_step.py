"""sketchplan's Adam step against torch's AdamW (fused and foreach) on GPT-2-small shapes (CPU), interleaved.

Our Adam runs torch's fused AdamW kernel where the dtypes allow it (``methods.adam.fused``) and the multi-tensor
(foreach) step otherwise; the "foreach path" row forces the latter on the same optimizer class, so the table
shows what the fused path buys and how close each is to ``torch.optim.AdamW(fused=True)``. Each optimizer has
its own copy of the parameters (one step changes them); the timing loop is ``step_time.step_times`` (rounds
interleaved, ratios within a round, min / median / max over rounds, the load average next to the table).

Usage: python benchmarks/adam_step.py [--layers 2] [--rounds 5] [--steps 3]
Writes benchmarks/results/adam_step.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import torch

import sketchplan.optimizers.torch.adam as adam_torch
from sketchplan.optimizers import Adam

from step_time import gpt2_params, step_times


class _ForeachOnly:
    """Our Adam with the fused path switched off for its own steps only."""

    def __init__(self, opt):
        self.opt = opt

    def step(self):
        saved = adam_torch.fused
        adam_torch.fused = lambda *a: False
        try:
            self.opt.step()
        finally:
            adam_torch.fused = saved


class _OwnParams:
    """Steps an optimizer on its own parameter copies (the shared list's gradients are re-attached each step)."""

    def __init__(self, make, params):
        self.own = [torch.nn.Parameter(p.detach().clone()) for p in params]
        self.shared = params
        self.opt = make(self.own)

    def step(self):
        for mine, p in zip(self.own, self.shared):
            mine.grad = p.grad
        self.opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per optimizer per round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = gpt2_params(args.layers)
    kw = dict(lr=1e-4, weight_decay=0.01)
    opts = {
        "torch AdamW fused": _OwnParams(lambda p: torch.optim.AdamW(p, fused=True, **kw), params),
        "torch AdamW foreach": _OwnParams(lambda p: torch.optim.AdamW(p, foreach=True, **kw), params),
        "sketchplan Adam (fused path; default: guard auto, off for all-Adam)": _OwnParams(lambda p: Adam(p, **kw),
                                                                                          params),
        "sketchplan Adam (fused path, nonfinite_guard=True)": _OwnParams(
            lambda p: Adam(p, nonfinite_guard=True, **kw), params),
        "sketchplan Adam (foreach path)": _OwnParams(lambda p: _ForeachOnly(Adam(p, **kw)), params),
    }
    load_before = os.getloadavg()
    samples = step_times({k: (v, args.steps) for k, v in opts.items()}, args.rounds, params)
    load_after = os.getloadavg()
    ref = samples["torch AdamW fused"]
    n = sum(p.numel() for p in params)
    lines = [
        "# Adam step vs torch AdamW",
        "",
        f"GPT-2 small shapes, {args.layers} blocks with embeddings ({n:,} parameters, float32), "
        f"{platform.machine()}, {os.cpu_count()} cores, 1 thread, torch {torch.__version__}; "
        f"{args.rounds} interleaved rounds of {args.steps} steps each (`benchmarks/adam_step.py`). "
        f"Load average before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.2f}' for x in load_after)} (a shared machine: only the ratios mean anything).",
        "",
        "| optimizer | ms / step min / median / max | × torch fused AdamW (min / median / max over rounds) |",
        "|---|---:|---:|",
    ]
    for name, ts in samples.items():
        ratios = sorted(t / r for t, r in zip(ts, ref))
        ms = sorted(t * 1e3 for t in ts)
        lines.append(f"| {name} | {ms[0]:.1f} / {statistics.median(ms):.1f} / {ms[-1]:.1f} | "
                     f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f} |")
    out = Path(__file__).parent / "results" / "adam_step.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
