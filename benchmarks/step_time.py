"""Optimizer step time on a GPT-2-small-shaped model (CPU): Sketchy vs blocked Shampoo vs AdamW vs our Adam.

Only ``optimizer.step()`` is timed (gradients are fixed random tensors set once), all methods in one run on the
same parameters. Shampoo and the Adams are timed over full cycles of ``precondition_frequency`` steps (so the
root refresh is amortised exactly as in training); Sketchy has no stored roots — its FD update runs every
step — so a few steps give its per-step time; Sketchy with ``stats_every = precondition_frequency`` (its
eigendecomposition at Shampoo's root frequency) is timed over full cycles too. Optimizers are interleaved round by round and the median round
is reported, because a shared CPU's background load otherwise swamps the differences.

Usage: python benchmarks/step_time.py [--layers 2] [--frequency 10] [--rank 256] [--block 1024]
Writes benchmarks/results/step_time.md and prints the same table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sketchplan.optimizers import Adam, BlockedShampoo, Sketchy


def gpt2_params(n_layer: int) -> list[torch.nn.Parameter]:
    """The parameters of GPT-2 small (vocab 50257, 768 wide, 1024 positions) with ``n_layer`` blocks."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer))
    params = list(model.parameters())  # the tied lm_head/wte weight appears once
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params


def median_step_time(optimizers: dict[str, tuple[torch.optim.Optimizer, int]], rounds: int) -> dict[str, float]:
    """Median over ``rounds`` of each optimizer's mean step time over its cycle, the optimizers interleaved
    round by round so that background load on the machine hits them alike. Each first step (state
    allocation, first roots) is not timed."""
    for opt, _ in optimizers.values():
        opt.step()
    samples: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(rounds):
        for name, (opt, steps) in optimizers.items():
            start = time.perf_counter()
            for _ in range(steps):
                opt.step()
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="transformer blocks (GPT-2 small has 12)")
    ap.add_argument("--frequency", type=int, default=10, help="precondition_frequency of Shampoo")
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--sketchy-steps", type=int, default=2, help="Sketchy steps per round (each costs the same)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (medians; the Adams get twice as many)")
    args = ap.parse_args()
    torch.manual_seed(0)
    params = gpt2_params(args.layers)
    n = sum(p.numel() for p in params)
    f = args.frequency
    adams = median_step_time({
        "AdamW (torch, foreach)": (torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=True), f),
        "Adam (sketchplan)": (Adam(params, lr=1e-4, weight_decay=0.01), f),
    }, rounds=args.rounds * 2)
    matrix = median_step_time({
        f"Shampoo (block {args.block}, f={f})": (
            BlockedShampoo(params, lr=1e-4, block_size=args.block, precondition_frequency=f), f),
        f"Sketchy (k={args.rank}, block {args.block})": (
            Sketchy(params, lr=1e-4, rank=args.rank, block_size=args.block), args.sketchy_steps),
        f"Sketchy (k={args.rank}, block {args.block}, sketch every {f})": (
            Sketchy(params, lr=1e-4, rank=args.rank, block_size=args.block, stats_every=f), f),
    }, rounds=args.rounds)
    rows = {**adams, **matrix}
    adamw = rows["AdamW (torch, foreach)"]
    shampoo = rows[f"Shampoo (block {args.block}, f={f})"]
    lines = [
        f"Step time of `optimizer.step()` on a GPT-2-small-shaped model with {args.layers} of 12 blocks "
        f"({n / 1e6:.1f} M parameters, tied embedding included), measured on CPU ({platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}); medians of interleaved rounds. Shampoo is "
        f"amortised over precondition cycles of {f} steps; Sketchy updates its sketches every step, or every {f} "
        f"steps with `stats_every={f}` (step skipping: the sketch's eigendecomposition at Shampoo's root frequency; "
        "Shampoo still accumulates its statistics every step).",
        "",
        "| method | ms / step | × torch AdamW | × Shampoo |",
        "|---|---:|---:|---:|",
    ]
    for name, sec in rows.items():
        lines.append(f"| {name} | {sec * 1e3:.1f} | {sec / adamw:.2f} | {sec / shampoo:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "step_time.md"
    out.write_text(text)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
