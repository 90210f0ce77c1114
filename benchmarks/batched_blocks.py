"""Kernels batched across tensors (``OptimizerDefaults.batch_blocks``, ``methods.batching``): step time, kernel
calls per step and the predicted step transients, tensor by tensor (``none``) against the default cap
(``auto``: a call holds at most its largest member's blocks) and one call per problem size (``all``).

On GPT-2-small block shapes (``step_time.gpt2_params``), for Sketchy (FD updates batched every step) and blocked
Shampoo (eigh roots batched every refresh; timed over full cycles of ``precondition_frequency`` steps). The three
settings of one method share parameters and gradients and are timed interleaved round by round; ratios are taken
within a round (min / median / max over rounds), the load average is written next to the table. Calls are counted
over one cycle by wrapping the kernels the rules call (``fd_update``; ``eigh_power`` and ``symmetric_power``).

Usage: python benchmarks/batched_blocks.py [--layers 2] [--rounds 5]
Writes benchmarks/results/batched_blocks.md and prints the same table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import torch
from allocator import describe as allocator_description
from allocator import reexec
from step_time import gpt2_params, step_times

from sketchplan.methods import MethodConfig, OptimizerDefaults, group_workspace_bytes
from sketchplan.optimizers import BlockedShampoo, Sketchy
from sketchplan.optimizers.torch import shampoo as torch_shampoo
from sketchplan.optimizers.torch import sketchy as torch_sketchy

MODES = ("none", "auto", "all")


def calls_per_step(opt: torch.optim.Optimizer, params, steps: int) -> float:
    """Kernel calls (FD updates, eigh roots) per step over ``steps`` steps."""
    count = [0]
    wrapped = {(torch_sketchy, "fd_update"), (torch_shampoo, "eigh_power"), (torch_shampoo, "symmetric_power")}
    saved = {(m, n): getattr(m, n) for m, n in wrapped}

    def counting(fn):
        def run(*a, **k):
            count[0] += 1
            return fn(*a, **k)
        return run

    for (m, n), fn in saved.items():
        setattr(m, n, counting(fn))
    try:
        grads = [p.grad for p in params]
        for _ in range(steps):
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
    finally:
        for (m, n), fn in saved.items():
            setattr(m, n, fn)
    return count[0] / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="transformer blocks (GPT-2 small has 12)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frequency", type=int, default=10)
    args = ap.parse_args()
    reexec()
    torch.manual_seed(0)
    params = gpt2_params(args.layers, embeddings=False)
    n = sum(p.numel() for p in params)
    f = args.frequency
    configs = [  # (label, optimizer factory, steps per timed cycle, MethodConfig, OptimizerDefaults for the replay)
        ("Sketchy k=256, block 1024", lambda m: Sketchy(params, lr=1e-4, rank=256, block_size=1024, batch_blocks=m),
         2, MethodConfig(method="sketchy", rank=256, block_size=1024), {}),
        ("Sketchy k=32, block 256", lambda m: Sketchy(params, lr=1e-4, rank=32, block_size=256, batch_blocks=m),
         2, MethodConfig(method="sketchy", rank=32, block_size=256), {}),
        ("blocked Shampoo, block 1024", lambda m: BlockedShampoo(params, lr=1e-4, block_size=1024,
                                                                  precondition_frequency=f, batch_blocks=m),
         f, MethodConfig(method="blocked_shampoo", block_size=1024), {"precondition_frequency": f}),
        ("blocked Shampoo, block 128", lambda m: BlockedShampoo(params, lr=1e-4, block_size=128,
                                                                 precondition_frequency=f, batch_blocks=m),
         f, MethodConfig(method="blocked_shampoo", block_size=128), {"precondition_frequency": f}),
    ]
    load_before = os.getloadavg()
    rows = []
    for label, make, steps, cfg, extra in configs:
        opts = {m: (make(m), steps) for m in MODES}
        calls = {m: calls_per_step(o, params, steps) for m, (o, _) in opts.items()}
        samples = step_times(opts, args.rounds, params)
        shapes = [(tuple(p.shape), "float32") for p in params]
        for m in MODES:
            ws = group_workspace_bytes(shapes, cfg, OptimizerDefaults(batch_blocks=m, **extra), scratch=False)
            rs = sorted(a / r for a, r in zip(samples[m], samples["none"]))
            rows.append(f"| {label} | `{m}` | {statistics.median(samples[m]) * 1e3:.1f} | "
                        f"{rs[0]:.2f} / {statistics.median(rs):.2f} / {rs[-1]:.2f} | {calls[m]:.1f} | "
                        f"{ws / 2**20:.1f} |")
    load_after = os.getloadavg()
    lines = [
        f"Kernels batched across tensors on {args.layers} GPT-2-small blocks without embeddings ({n / 1e6:.1f} M "
        f"parameters), CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {allocator_description()}); {args.rounds} interleaved rounds. Load average (1 min) "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after (a shared 2-core machine: ratios within a round, "
        f"min / median / max). Shampoo rows are amortised over cycles of {f} steps (one refresh). Calls: FD updates "
        "or eigh roots per step. Transients: the predicted high-water mark of the step above parameters, gradients "
        "and state (`methods.group_workspace_bytes`, tensor-level).",
        "",
        "| method | batch_blocks | ms / step (median) | × `none` | kernel calls / step | step transients (MiB) |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(__file__).parent / "results" / "batched_blocks.md").write_text(text)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
