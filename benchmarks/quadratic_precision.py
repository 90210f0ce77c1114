"""The float32 quadratic of Mei, Moreno & Walters 2023 (KrADagrad's synthetic test), at n = 512.

f(X) = Σ X ⊙ (H₀ X H₁) = tr(Xᵀ H₀ X H₁), H_i = Q_i diag(λ) Q_iᵀ with λ log-spaced from 1 to 1e-4 (condition
1e4 per factor), gradient 2 H₀ X H₁. KrADagrad and Shampoo (default ``epsilon_mode="relative"``) run T steps
in float32 (parameters and state) and in float64, from the same X₀, with the same options; the table gives
f(X_T)/f(X_0) for both and their ratio (issue 16's acceptance: within 2×). Deterministic (no timings); the
load average is recorded because the run is long on a shared machine.

Usage: python benchmarks/quadratic_precision.py [--n 512] [--steps 100] [--lr 0.01]
Writes benchmarks/results/quadratic_precision.md and prints the same table.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from pathlib import Path

import torch

from sketchplan.optimizers import KrADagrad, Shampoo


def problem(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lam = torch.logspace(0, -4, n, dtype=torch.float64)
    hs = []
    for _ in range(2):
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        hs.append((q * lam) @ q.T)
    x0 = torch.randn(n, n, generator=g, dtype=torch.float64)
    return hs, x0


def run(make, hs, x0, dtype, steps: int) -> float:
    h0, h1 = (h.to(dtype) for h in hs)
    x = torch.nn.Parameter(x0.to(dtype).clone())
    opt = make([x], "float64" if dtype == torch.float64 else "float32")

    def f(t):
        return float((t.double() * (hs[0] @ t.double() @ hs[1])).sum())

    start = f(x.detach())
    for _ in range(steps):
        with torch.no_grad():
            x.grad = 2 * h0 @ x @ h1
        opt.step()
    return f(x.detach()) / start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    hs, x0 = problem(args.n)
    common = dict(lr=args.lr, momentum="none", precondition_frequency=10, merge_dims=1)
    methods = {
        "KrADagrad (star, ε=1e-6)": lambda ps, sd: KrADagrad(ps, shampoo_eps=1e-6, state_dtype=sd, **common),
        "Shampoo (relative ε=1e-6)": lambda ps, sd: Shampoo(ps, shampoo_eps=1e-6, state_dtype=sd, **common),
        "Shampoo (absolute ε=1e-6)": lambda ps, sd: Shampoo(ps, shampoo_eps=1e-6, epsilon_mode="absolute",
                                                            state_dtype=sd, **common),
        "Shampoo (relative ε=1e-12)": lambda ps, sd: Shampoo(ps, shampoo_eps=1e-12, state_dtype=sd, **common),
        "Shampoo (absolute ε=1e-12)": lambda ps, sd: Shampoo(ps, shampoo_eps=1e-12, epsilon_mode="absolute",
                                                             state_dtype=sd, **common),
    }
    rows = []
    for name, make in methods.items():
        r32 = run(make, hs, x0, torch.float32, args.steps)
        r64 = run(make, hs, x0, torch.float64, args.steps)
        ratio = max(r32, r64) / min(r32, r64)
        rows.append(f"| {name} | {r32:.4e} | {r64:.4e} | {ratio:.3f} | {'yes' if ratio <= 2 else 'NO'} |")
        print(rows[-1], flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        f"# float32 vs float64 on the §6 quadratic (n = {args.n}, condition 1e4 per factor)",
        "",
        f"{args.steps} steps, lr {args.lr}, Adam grafting, no momentum, roots every 10 steps, merge_dims 1; "
        "f(X_T)/f(X_0) (lower is better). Written by `benchmarks/quadratic_precision.py`.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}; `uptime`: {load}",
        "",
        "| method | f32 f(X_T)/f(X_0) | f64 f(X_T)/f(X_0) | ratio | within 2× |",
        "|---|---|---|---|---|",
        *rows, ""])
    out = Path(__file__).parent / "results" / "quadratic_precision.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
