"""Step time of compressed optimizer state on CPU (issue 19 part A): Adam with 8-bit or bfloat16 moments, Lion,
Adafactor and Muon against our fp32 Adam, on the matrices of one GPT-2-small block (768×2304, 768×768, 768×3072,
3072×768) plus its vectors.

Only ``optimizer.step()`` is timed (fixed random gradients, set once). The optimizers run interleaved, round by
round, in one process; each round times ``STEPS`` steps of every optimizer, and the table reports per optimizer
the ratio of its step time to fp32 Adam's in the same round: min / median / max over the rounds, next to the load
average (``os.getloadavg``) before and after. The machine is a shared 2-core VM: absolute times are noisy, the
ratios within a round much less so.

Usage: PYTHONPATH=src python benchmarks/compressed_step.py [--rounds 7] [--steps 3]
Writes benchmarks/results/compressed_step.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sketchplan.methods import MethodConfig, OptimizerDefaults
from sketchplan.optimizers.torch import SketchplanOptimizer, group_options

SHAPES = [(768, 2304), (2304,), (768, 768), (768,), (768, 3072), (3072,), (3072, 768), (768,), (768,), (768,)]
CONFIGS = {
    "Adam fp32 (baseline)": MethodConfig(method="adam"),
    "Adam, v in bf16": MethodConfig(method="adam", compress="bfloat16"),
    "8-bit Adam (m, v int8)": MethodConfig(method="adam", momentum="int8", compress="int8"),
    "Lion": MethodConfig(method="lion"),
    "Adafactor": MethodConfig(method="adafactor", momentum="none"),
    "Muon (fp32 NS, matrices)": MethodConfig(method="muon"),
}


def make(cfg: MethodConfig) -> tuple[SketchplanOptimizer, list[torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in SHAPES]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    opts = OptimizerDefaults()
    return SketchplanOptimizer([{"params": ps, **group_options(cfg, opts)}], cfg, opts), ps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    opts = {name: make(cfg)[0] for name, cfg in CONFIGS.items()}
    for o in opts.values():
        o.step()  # allocate the state, warm up
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {n: [] for n in opts}
    for _ in range(args.rounds):
        for name, o in opts.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                o.step()
            times[name].append((time.perf_counter() - t) / args.steps)
    load_after = os.getloadavg()
    base = times["Adam fp32 (baseline)"]
    lines = [
        "# Step time of compressed state and the new methods (CPU)",
        "",
        f"`python benchmarks/compressed_step.py --rounds {args.rounds} --steps {args.steps}`; torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, on a shared 2-core VM "
        f"(noisy: load average {load_before[0]:.1f} before, {load_after[0]:.1f} after). Tensors: one GPT-2-small "
        "block (768×2304, 768×768, 768×3072, 3072×768 and six vectors), one param group per optimizer; "
        "optimizers interleaved round by round; ratio = step time / fp32 Adam's step time in the same round.",
        "",
        "| optimizer | state bytes | step ms (median) | ratio to fp32 Adam: min | median | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, o in opts.items():
        state = sum(v.numel() * v.element_size() for s in o.state.values() for v in s.values() if torch.is_tensor(v))
        ratios = [t / b for t, b in zip(times[name], base)]
        lines.append(f"| {name} | {state:,} | {statistics.median(times[name]) * 1e3:.2f} | {min(ratios):.2f} | "
                     f"{statistics.median(ratios):.2f} | {max(ratios):.2f} |")
    lines += ["", "Compressed state is decoded, updated by the method's own rule and encoded again one tensor at a "
              "time (`optimizers/torch/compressed.py`); bitsandbytes fuses this into one GPU kernel, which this "
              "CPU implementation does not attempt."]
    out = Path(__file__).parent / "results" / "compressed_step.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
