"""Optimizer step time on a GPT-2-small-shaped model (CPU): Sketchy vs blocked Shampoo vs AdamW vs our Adam, and
peers: facebookresearch DistributedShampoo and heavyball SOAP when importable.

Only ``optimizer.step()`` is timed (gradients are fixed random tensors set once), all optimizers in one run on the
same parameters, interleaved round by round (a shared CPU's background load otherwise swamps the differences).
Shampoo-like optimizers and the Adams are timed over full cycles of ``precondition_frequency`` steps (so the
root refresh is amortised exactly as in training); Sketchy has no stored roots — its FD update runs every step —
so a few steps give its per-step time; Sketchy with ``stats_every = precondition_frequency`` is timed over full
cycles too. Every ratio is taken within a round (both optimizers measured back to back) and reported as
min / median / max over the rounds; the load average is written next to the table.

"AdamW (torch, fused) + isfinite check" is torch's fused AdamW behind the check a user writes for the protection
our Adam's guard gives with ``nonfinite_guard=True`` (``CheckedAdamW``): guarded against guarded. Our Adam by
default (``nonfinite_guard="auto"``: off where every tensor is elementwise) runs torch's fused kernel alone.

Peers are never vendored or installed into the project: DistributedShampoo from a source snapshot
(``git archive`` of facebookresearch/optimizers into a folder on PYTHONPATH), heavyball from a separate
``pip install --target`` folder (benchmarks/requirements.txt), e.g.
    PYTHONPATH=src:/tmp/fbopt:/tmp/hb python benchmarks/step_time.py

Usage: python benchmarks/step_time.py [--layers 2] [--frequency 10] [--rank 256] [--block 1024] [--rounds 3]
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
from allocator import describe as allocator_description
from allocator import reexec

from sketchplan.optimizers import Adam, BlockedShampoo, Sketchy


def gpt2_params(n_layer: int, embeddings: bool = True) -> list[torch.nn.Parameter]:
    """The parameters of GPT-2 small (vocab 50257, 768 wide, 1024 positions) with ``n_layer`` blocks; without
    ``embeddings``, only the blocks' and the final LayerNorm's (768 × 2304, 768 × 768, 768 × 3072, 3072 × 768)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer))
    params = [p for name, p in model.named_parameters()  # the tied lm_head/wte weight appears once
              if embeddings or not name.startswith(("transformer.wte", "transformer.wpe"))]
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params


class CheckedAdamW:
    """torch's fused AdamW behind the cheapest finiteness check a user writes for the protection our Adam's
    ``nonfinite_guard`` gives: one ``torch._foreach_norm`` over the gradients (what ``clip_grad_norm_`` computes),
    and the step skipped when a norm is NaN or Inf (a float32 norm overflows to Inf for a gradient our guard
    skips as too large, too). The whole step is skipped where ours zeroes the bad tensors' gradients only, and the
    flag is read on the host every step (on an accelerator a sync our guard does without)."""

    def __init__(self, params, **kwargs):
        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, fused=True, **kwargs)

    def step(self):
        grads = [p.grad for p in self.params if p.grad is not None]
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            self.opt.step()


def step_times(optimizers: dict[str, tuple[torch.optim.Optimizer, int]], rounds: int,
               params: list[torch.nn.Parameter]) -> dict[str, list[float]]:
    """Per round, each optimizer's mean step time over its cycle, the optimizers interleaved round by round so
    that background load hits them alike. A first cycle (state allocation, first roots, fb's grafting-only steps
    before its ``start_preconditioning_step``) is not timed. The gradients are re-attached before every step
    (heavyball's step sets ``p.grad = None``, which made every later optimizer's step a no-op)."""
    grads = [p.grad for p in params]

    def step(opt):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    for opt, steps in optimizers.values():
        for _ in range(steps):
            step(opt)
    samples: dict[str, list[float]] = {name: [] for name in optimizers}
    for r in range(rounds):
        for name, (opt, steps) in optimizers.items():
            start = time.perf_counter()
            for _ in range(steps):
                step(opt)
            samples[name].append((time.perf_counter() - start) / steps)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1] * 1e3:.0f} ms" for n, v in samples.items()),
              flush=True)
    return samples


def peers(params, args) -> dict[str, tuple[torch.optim.Optimizer, int]]:
    """facebookresearch DistributedShampoo (same block, frequency, betas, ε and Adam grafting as ours; it requires
    ``start_preconditioning_step`` ≥ the frequency, so its first cycle is grafting only and untimed)
    and heavyball SOAP (its defaults, our frequency, no torch.compile), each only when importable."""
    f, out = args.frequency, {}
    try:
        from distributed_shampoo import AdamPreconditionerConfig, DistributedShampoo
        out[f"fb DistributedShampoo (block {args.block}, f={f})"] = (DistributedShampoo(
            params, lr=1e-4, betas=(0.9, 0.999), epsilon=1e-12, max_preconditioner_dim=args.block,
            precondition_frequency=f, start_preconditioning_step=f,
            grafting_config=AdamPreconditionerConfig(beta2=0.999, epsilon=1e-8)), f)
    except ImportError:
        print("distributed_shampoo not importable: its row is skipped (see the module docstring)")
    try:
        import heavyball
        import heavyball.utils
        heavyball.utils.compile_mode = None
        out[f"heavyball SOAP (f={f})"] = (heavyball.SOAP(params, lr=1e-4, betas=(0.9, 0.999),
                                                         precondition_frequency=f, compile_step=False), f)
    except ImportError:
        print("heavyball not importable: its SOAP row is skipped (benchmarks/requirements.txt)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="transformer blocks (GPT-2 small has 12)")
    ap.add_argument("--frequency", type=int, default=10, help="precondition_frequency of Shampoo")
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--sketchy-steps", type=int, default=2, help="Sketchy steps per round (each costs the same)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (ratios: min/median/max over them)")
    ap.add_argument("--no-embeddings", action="store_true", help="time the transformer blocks' parameters only")
    args = ap.parse_args()
    reexec()
    torch.manual_seed(0)
    params = gpt2_params(args.layers, not args.no_embeddings)
    n = sum(p.numel() for p in params)
    f, k, b = args.frequency, args.rank, args.block
    shampoo = f"Shampoo (block {b}, f={f})"
    adamw_fused = "AdamW (torch, fused)"
    adamw_checked = "AdamW (torch, fused) + isfinite check"
    adam_guarded = "Adam (sketchplan, nonfinite_guard=True)"
    opts = {
        "AdamW (torch, foreach)": (torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=True), f),
        adamw_fused: (torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True), f),
        adamw_checked: (CheckedAdamW(params, lr=1e-4, weight_decay=0.01), f),
        "Adam (sketchplan)": (Adam(params, lr=1e-4, weight_decay=0.01), f),
        adam_guarded: (Adam(params, lr=1e-4, weight_decay=0.01, nonfinite_guard=True), f),
        shampoo: (BlockedShampoo(params, lr=1e-4, block_size=b, precondition_frequency=f), f),
        **peers(params, args),
        f"Sketchy (k={k}, block {b}, exact FD: gram_large)": (
            Sketchy(params, lr=1e-4, rank=k, block_size=b, fd_variant="gram_large"), args.sketchy_steps),
        f"Sketchy (k={k}, block {b}, subspace FD)": (
            Sketchy(params, lr=1e-4, rank=k, block_size=b, fd_variant="subspace"), args.sketchy_steps),
        f"Sketchy (k={k}, block {b}, FD auto)": (Sketchy(params, lr=1e-4, rank=k, block_size=b), args.sketchy_steps),
        f"Sketchy (k={k}, block {b}, subspace FD, sketch every {f})": (
            Sketchy(params, lr=1e-4, rank=k, block_size=b, fd_variant="subspace", stats_every=f), f),
    }
    load_before = os.getloadavg()
    samples = step_times(opts, args.rounds, params)
    load_after = os.getloadavg()
    fb = next((name for name in samples if name.startswith("fb ")), None)

    def ratio(name: str, ref: str | None) -> str:
        if ref is None or ref not in samples:
            return "–"
        rs = sorted(a / r for a, r in zip(samples[name], samples[ref]))
        return f"{rs[0]:.2f} / {statistics.median(rs):.2f} / {rs[-1]:.2f}"

    lines = [
        f"Step time of `optimizer.step()` on a GPT-2-small-shaped model with {args.layers} of 12 blocks "
        f"({n / 1e6:.1f} M parameters, {'embeddings left out' if args.no_embeddings else 'tied embedding included'}"
        f"), measured on CPU ({platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {allocator_description()}); "
        f"{args.rounds} interleaved rounds. Load "
        f"average (1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after: a shared 2-core machine, so "
        "absolute times are inflated and noisy; ratios are taken within a round (min / median / max over rounds). "
        f"Shampoo-like rows are amortised over precondition cycles of {f} steps; Sketchy updates its sketches "
        f"every step, or every {f} steps with `stats_every={f}`. FD variants: `gram_large` is the exact update "
        "(eigh of the d × d Gram), `subspace` the approximate O(d·(k+n)·l) update (exact when l = k + n), `auto` "
        "picks per shape without a profile (`kernels.calls.choose_variant`). The non-finite guard (one read of "
        "every gradient per step that keeps NaN and Inf out of the state) runs by default beside a matrix method "
        "(`nonfinite_guard=\"auto\"`), so in every Shampoo and Sketchy row; an all-Adam optimizer leaves it out "
        "as torch's AdamW does, and `nonfinite_guard=True` puts it back (against it, "
        f"`{adamw_checked}` adds the check a user would write for the same protection).",
        "",
        "| method | ms / step (median) | × torch fused AdamW | × our Shampoo | × fb DistributedShampoo |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in samples.items():
        lines.append(f"| {name} | {statistics.median(v) * 1e3:.1f} | {ratio(name, adamw_fused)} | "
                     f"{ratio(name, shampoo)} | {ratio(name, fb)} |")
    lines += ["", f"{adam_guarded} × {adamw_checked}: {ratio(adam_guarded, adamw_checked)} "
              "(min / median / max over rounds): guarded against guarded."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "step_time.md"
    out.write_text(text)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
