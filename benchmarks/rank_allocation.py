"""Per-layer Sketchy ranks at one fixed memory: uniform vs trace-proportional vs sketchplan's spectrum plan.

Task: the byte-level transformer of ``tasks.CharLM`` (d = 128, 2 layers) on the Python standard library's
source text. Steps:

1. probe: ``sketchplan.probe`` runs PROBE_STEPS AdamW steps and sketches every matrix's Kronecker factors;
2. three Sketchy plans for the matrices (vectors get Adam in all three), all with Adam grafting and float32
   momentum, at the memory of (a):
   (a) uniform rank K0 everywhere;
   (b) the peer approach: the same total rank redistributed across tensors in proportion to each tensor's
       sketch trace (rescaled until its state bytes fit those of (a));
   (c) ``make_plan`` with the spectrum (``--spectrum``), Sketchy only, ranks RANKS, budget = (a)'s peak;
3. for each: the spectral mass captured per tensor (mean over axes of the top-k share of the factor's trace,
   ``planner.probe.spectral_capture``) and TRAIN_STEPS of training from the same initialisation and data
   (final train loss = mean of the last 20 steps, validation loss on held-out stdlib files).

Run: ``python benchmarks/rank_allocation.py`` (about 10 minutes on 2 CPU cores); writes
benchmarks/results/rank_allocation.md.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tasks import CharLM, char_batches, cosine_lr, lm_eval, lm_loss, stdlib_corpus  # noqa: E402

from sketchplan.build import build_optimizer  # noqa: E402
from sketchplan.methods import MethodConfig, OptimizerDefaults  # noqa: E402
from sketchplan.planner import analyze, make_plan, plan_from_configs  # noqa: E402
from sketchplan.planner.analysis import ModelSpec  # noqa: E402
from sketchplan.planner.probe import probe, spectral_capture  # noqa: E402

PROBE_STEPS = int(os.environ.get("PROBE_STEPS", 100))
TRAIN_STEPS = int(os.environ.get("TRAIN_STEPS", 300))
K0 = 8
RANKS = [2, 4, 6, 8, 12, 16, 24, 32, 48, 64]
LR = 3e-3
BATCH, CONTEXT, SEED = 32, 64, 0
OPTS = OptimizerDefaults(lr=LR, betas=(0.9, 0.999), shampoo_eps=1e-6, precondition_frequency=10,
                         weight_decay=0.0)


def sketchy(k: int) -> MethodConfig:
    return MethodConfig(method="sketchy", rank=k, graft="adam", momentum="float32")


def fresh_model() -> CharLM:
    torch.manual_seed(SEED)
    return CharLM(context=CONTEXT)


def train(configs: dict[str, MethodConfig], train_data, val_data) -> tuple[float, float, float]:
    model = fresh_model()
    plan = plan_from_configs(model, configs, OPTS)
    opt = build_optimizer(plan, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, TRAIN_STEPS, 20))
    it = char_batches(train_data, BATCH, CONTEXT, SEED + 1)
    losses = []
    t0 = time.perf_counter()
    for _ in range(TRAIN_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model, next(it))
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    secs = time.perf_counter() - t0
    return sum(losses[-20:]) / 20, lm_eval(model, val_data, CONTEXT), secs


def state_bytes(model, configs) -> int:
    return plan_from_configs(model, configs, OPTS).totals.state_bytes


def main() -> None:
    train_data, val_data = stdlib_corpus()
    model = fresh_model()
    t = time.perf_counter()
    spectra = probe(model, lm_loss, char_batches(train_data, BATCH, CONTEXT, SEED + 2), steps=PROBE_STEPS,
                    rank=64, lr=LR, progress=True)
    probe_secs = time.perf_counter() - t
    meta = fresh_model()
    spec = analyze(meta)
    mats = [p for p in spec.trainable if p.name in spectra.tensors]
    vec = {p.name: MethodConfig(method="adam") for p in spec.trainable if p.name not in spectra.tensors}

    uniform = {p.name: sketchy(K0) for p in mats}

    traces = {p.name: spectra.tensors[p.name].axes[0].trace for p in mats}
    total_rank = K0 * len(mats)

    def proportional(scale: float) -> dict[str, MethodConfig]:
        out = {}
        for p in mats:
            k = round(scale * total_rank * traces[p.name] / sum(traces.values()))
            out[p.name] = sketchy(max(1, min(k, max(p.shape))))
        return out

    target = state_bytes(meta, {**uniform, **vec})
    lo, hi = 0.0, 4.0
    for _ in range(40):  # largest rescaling of the trace-proportional ranks that fits (a)'s bytes
        mid = (lo + hi) / 2
        if state_bytes(meta, {**proportional(mid), **vec}) <= target:
            lo = mid
        else:
            hi = mid
    trace_prop = proportional(lo)

    mat_spec = ModelSpec(params=mats, source="CharLM matrices")
    budget = plan_from_configs(mat_spec, uniform, OPTS).totals.peak_bytes
    plan = make_plan(mat_spec, budget, methods=["sketchy"], ranks=RANKS, block_sizes=[], grafts=["adam"],
                     momenta=["float32"],
                     defaults=OPTS, spectrum=spectra)
    informed = {e.name: e.config() for e in plan.tensors}

    arms = {"(a) uniform": uniform, "(b) trace-proportional": trace_prop, "(c) sketchplan spectrum": informed}
    results = {}
    for label, cfg in arms.items():
        full = {**cfg, **vec}
        caps = {n: spectral_capture(spectra.tensors[n], c.block_size, c.rank) for n, c in cfg.items()}
        weights = {p.name: p.numel for p in mats}
        captured = sum(caps[n] * weights[n] for n in caps) / sum(weights.values())
        tr, va, secs = train(full, train_data, val_data)
        results[label] = dict(ranks={n: c.rank for n, c in cfg.items()}, caps=caps, captured=captured,
                              bytes=state_bytes(meta, full), train=tr, val=va, secs=secs)
        print(f"{label}: state {results[label]['bytes']:,} B, captured {captured:.4f}, train {tr:.4f}, "
              f"val {va:.4f} ({secs:.0f} s)", flush=True)

    lines = [f"Measured on {platform.processor() or platform.machine()} ({os.cpu_count()} cores), torch "
             f"{torch.__version__}. CharLM d=128, 2 layers, context {CONTEXT}, batch {BATCH}; probe {PROBE_STEPS} "
             f"AdamW steps (FD rank 64, {probe_secs:.0f} s); training {TRAIN_STEPS} steps, lr {LR} cosine, "
             "Sketchy with Adam grafting and float32 momentum on every matrix, Adam on vectors. One seed.", "",
             "| tensor | shape | " + " | ".join(f"{a} rank / captured" for a in arms) + " |",
             "|---|---|" + "---|" * len(arms)]
    for p in mats:
        cells = [f"{results[a]['ranks'][p.name]} / {results[a]['caps'][p.name]:.3f}" for a in arms]
        lines.append(f"| {p.name} | {'×'.join(map(str, p.shape))} | " + " | ".join(cells) + " |")
    lines += ["", "| plan | optimizer state (bytes) | captured mass (parameter-weighted) | final train loss | "
              "validation loss | train time (s) |", "|---|---|---|---|---|---|"]
    for a in arms:
        r = results[a]
        lines.append(f"| {a} | {r['bytes']:,} | {r['captured']:.4f} | {r['train']:.4f} | {r['val']:.4f} | "
                     f"{r['secs']:.0f} |")
    c, others = results["(c) sketchplan spectrum"], [results[a] for a in list(arms)[:2]]
    mass_ok = all(c["captured"] >= o["captured"] - 1e-9 for o in others)
    loss_ok = all(c["train"] <= o["train"] + 1e-9 for o in others)
    lines += ["", f"Goal: (c) captures at least as much mass as (a) and (b) at the same bytes — "
              f"{'met' if mass_ok else 'NOT met'}; reaches a final train loss no worse than either — "
              f"{'met' if loss_ok else 'NOT met'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "rank_allocation.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# Rank allocation at fixed memory\n\n" + text)


if __name__ == "__main__":
    main()
