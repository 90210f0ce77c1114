"""Predicted vs measured optimizer step time, per model and plan, on the profiled device (CPU here).

Run: ``python benchmarks/predict_vs_measure.py PROFILE.yaml`` — prints a markdown table and writes
benchmarks/results/predict_vs_measure.md.

Models: GPT-2 with its real widths (vocabulary 50257, 768 wide, MLP 3072) but ``GPT2_LAYERS`` layers (full
Shampoo on twelve layers needs 24 eigendecompositions of 3072² per refresh: minutes per step on 2 CPU cores),
and two custom models: an MLP (1024 → 2048 → 1024 → 1000) and a small conv net (order-3 conv blocks). Plans:
all-Shampoo, all-Sketchy (k = 64) and the autotuned mix (``make_plan`` under a budget between all-Adam and
all-Shampoo, ranks ``MIX_RANKS`` and block sizes ``MIX_BLOCKS``), each with the profile as ``hardware`` so that
entries carry their predicted step ms and kernel variants, and the optimizer runs the recorded variants.

Measurement: real weights and fresh random gradients every step (drawn outside the timed region; fixed
gradients make the statistics rank-deficient, which speeds up eigh and distorts the comparison); torch uses the profile's thread count;
``precondition_frequency`` = ``PF``. ``WARMUP`` steps (state allocation, first roots), then ``CYCLES`` · PF timed
consecutive steps (≥ 20, holding ``CYCLES`` root refreshes). "measured" is the mean over those whole precondition cycles — the quantity the
plan predicts (every root refresh amortised over PF steps); the median of the non-refresh steps is compared with
the predicted every-step part as well. Errors are (predicted − measured) / measured. The machine is shared: the
``slowdown`` column times reference kernels around each row against the profile, and the adjusted error scales
the prediction by it (both are reported). The calibrated error re-predicts the same plan (same kernels, same
variants) with the profile scaled by ``profiles.calibrate`` measured just before the row (per kernel family, at
two sizes, interpolated in log-work): what ``--hardware auto`` does on a machine whose state differs from the
profile's.
"""

from __future__ import annotations

import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from allocator import describe as allocator_description
from allocator import reexec
from sketchplan.kernels.timing import median_seconds, torch_runner
from sketchplan.build import build_optimizer
from sketchplan.methods import METHOD_MODULES
from sketchplan.methods.layout import MethodConfig, OptimizerDefaults
from sketchplan.planner import make_plan
from sketchplan.planner.make import uniform_plan
from sketchplan.profiles import CostModel, HardwareProfile
from sketchplan.profiles.measure import _torch_problem

PF = 10
CYCLES = 2
WARMUP = 2
#: Reference kernels timed around every row to measure the machine's current slowdown against the profile.
CALIBRATION = [("gemm", "matmul", (768, 768, 768)), ("inv_root", "eigh", (384,)), ("pointwise", "lerp", (1 << 20,))]
GPT2_LAYERS = 1
#: The autotuned mix's grid (the default grid's rank-512 sketches of GPT-2's embedding take ~25 s a step on 1 core)
MIX_RANKS = (16, 32, 64, 128)
MIX_BLOCKS = (256, 512, 1024)
OUT = Path(__file__).parent / "results" / "predict_vs_measure.md"


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=GPT2_LAYERS))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1024, 2048), nn.GELU(), nn.Linear(2048, 1024), nn.GELU(),
                                 nn.Linear(1024, 1000))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 128, 3), nn.ReLU(),
                                      nn.Conv2d(128, 256, 3), nn.ReLU(), nn.Conv2d(256, 256, 3))
        self.head = nn.Sequential(nn.Linear(2304, 512), nn.ReLU(), nn.Linear(512, 100))


MODELS = {f"gpt2 ({GPT2_LAYERS} layer, full widths)": gpt2, "mlp 1024-2048-1024-1000": MLP,
          "convnet (4 conv + 2 linear)": ConvNet}


def plans(model, profile, opts):
    shampoo = uniform_plan(model, MethodConfig(method="shampoo"), opts, hardware=profile)
    sketchy = uniform_plan(model, MethodConfig(method="sketchy", rank=64), opts, hardware=profile)
    adam = uniform_plan(model, MethodConfig(method="adam"), opts)
    fixed = shampoo.totals.params_bytes + shampoo.totals.grads_bytes
    budget = fixed + (adam.totals.state_bytes + shampoo.totals.state_bytes) // 2 + shampoo.totals.workspace_bytes
    mix = make_plan(model, budget, defaults=opts, hardware=profile, ranks=MIX_RANKS, block_sizes=MIX_BLOCKS)
    return {"all-Shampoo": shampoo, "all-Sketchy (k=64)": sketchy, "autotuned mix": mix}


def split_prediction(plan, opts, cost: CostModel) -> float:
    """Predicted ms of the every-step part (calls with every = 1) with the plan's variants (the non-finite guard
    resolved for the plan's methods, as the built optimizer runs it)."""
    opts = opts.with_guard_for({e.method for e in plan.tensors if e.method})
    total = 0.0
    for e in plan.tensors:
        cfg = e.config()
        if cfg is None:
            continue
        for c in METHOD_MODULES[cfg.method].kernel_calls(tuple(e.shape), cfg, opts):
            if c.every == 1:
                total += cost.call(c, (e.variant or {}).get(c.kernel)).seconds
    return total * 1e3


def predicted_ms(plan, opts, cost: CostModel) -> float:
    """The plan's amortised step under ``cost``, with the plan's own kernel variants (guard resolved as above)."""
    opts = opts.with_guard_for({e.method for e in plan.tensors if e.method})
    total = 0.0
    for e in plan.tensors:
        cfg = e.config()
        if cfg is None:
            continue
        for c in METHOD_MODULES[cfg.method].kernel_calls(tuple(e.shape), cfg, opts):
            total += cost.call(c, (e.variant or {}).get(c.kernel)).seconds / c.every
    return total * 1e3


def calibrated_cost(profile) -> CostModel:
    """The profile scaled by a calibration measured now at its thread count (not cached)."""
    from sketchplan.profiles.calibrate import ratios, scaled, torch_measure

    table = ratios(profile, torch_measure(profile.device.cores))
    return CostModel(scaled(profile, profile.device, table))


def slowdown(cost: CostModel) -> float:
    """Measured / profiled time of reference kernels now (a shared CPU's load changes between the profile run
    and this one): the geometric mean over a matrix product, an eigh root and an elementwise pass, each against
    the profile's own point of that size (not the model, whose elementwise passes are priced out of cache)."""
    ratios = []
    for kernel, variant, dims in CALIBRATION:
        fn, _ = _torch_problem(kernel, variant, dims, "cpu")
        t, _ = median_seconds(torch_runner(fn, "cpu"), warmup=1, min_reps=5, budget_s=0.3)
        table = cost.profile.table(kernel, variant)
        point = next((p.seconds for p in table.points if tuple(p.dims) == dims), None) if table else None
        ratios.append(t / (point or cost.problem(kernel, variant, dims).seconds))
    return math.exp(statistics.fmean(math.log(r) for r in ratios))


def measure(model, plan) -> tuple[float, float]:
    """(mean ms over CYCLES whole cycles, median ms of the non-refresh steps)."""
    gen = torch.Generator().manual_seed(1)
    params = list(model.parameters())

    def fresh_grads():  # new gradients every step (fixed ones make statistics rank-deficient: faster eigh)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    opt = build_optimizer(plan, model)
    for _ in range(WARMUP):  # state allocation and the first roots (step 1 refreshes)
        fresh_grads()
        opt.step()
    times, refresh = [], []
    for i in range(CYCLES * PF):
        step = WARMUP + 1 + i
        fresh_grads()
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
        refresh.append((step - 1) % PF == 0)  # start_preconditioning_step = 1
    plain = [t for t, r in zip(times, refresh) if not r]
    return statistics.fmean(times) * 1e3, statistics.median(plain) * 1e3


def main() -> None:
    reexec()
    profile = HardwareProfile.load(sys.argv[1])
    if profile.device.kind == "cpu" and profile.device.cores:
        torch.set_num_threads(profile.device.cores)
    opts = OptimizerDefaults(precondition_frequency=PF)
    cost = CostModel(profile)
    rows, errs, adj_errs, cal_errs = [], [], [], []
    for mname, factory in MODELS.items():
        model = factory()
        for pname, plan in plans(model, profile, opts).items():
            before = slowdown(cost)
            pred_cal = predicted_ms(plan, opts, calibrated_cost(profile))
            mean_ms, plain_ms = measure(model, plan)
            load = (before * slowdown(cost)) ** 0.5
            pred = plan.totals.step_ms
            pred_plain = split_prediction(plan, opts, cost)
            err = (pred - mean_ms) / mean_ms
            adj = (pred * load - mean_ms) / mean_ms
            errs.append(abs(err))
            adj_errs.append(abs(adj))
            cal = (pred_cal - mean_ms) / mean_ms
            cal_errs.append(abs(cal))
            methods = ", ".join(f"{m}" for m in sorted(plan.totals.state_bytes_by_method))
            rows.append(f"| {mname} | {pname} ({methods}) | {pred:,.1f} | {mean_ms:,.1f} | {err:+.1%} | "
                        f"{pred_plain:,.1f} | {plain_ms:,.1f} | {(pred_plain - plain_ms) / plain_ms:+.1%} | "
                        f"{load:.2f} | {adj:+.1%} | {pred_cal:,.1f} | {cal:+.1%} |")
            print(rows[-1], flush=True)
    head = [
        "# Predicted vs measured optimizer step time",
        "",
        f"Profile `{profile.name}` ({profile.device.name}, {profile.device.cores} thread(s), "
        f"{profile.device.framework} {profile.device.framework_version}; {'quick' if profile.quick else 'full'} grid). "
        f"Measured on {platform.node() or 'this machine'} with the same thread count (a CPU shared with other jobs: "
        f"expect noise), under {allocator_description()}.",
        f"precondition_frequency = {PF}; measured = mean of {CYCLES * PF} consecutive steps ({CYCLES} whole "
        f"precondition cycles, {CYCLES} root refreshes) after {WARMUP} warm-up steps; plain = median of the "
        "non-refresh steps vs the predicted every-step part. slowdown = measured / profiled time of reference kernels "
        "(gemm 768³, eigh root 384, elementwise 1M) around the row: the machine's load then vs during profiling; "
        "adjusted error = (predicted × slowdown − measured) / measured. "
        f"GPT-2 uses {GPT2_LAYERS} transformer layer(s) at full width (all 12 make full-Shampoo steps take minutes "
        f"on 2 cores). The mix's grid: ranks {MIX_RANKS}, block sizes {MIX_BLOCKS}.",
        "",
        "| model | plan (methods) | predicted ms/step | measured ms/step | error | predicted plain ms | measured plain "
        "ms | error | slowdown | adjusted error | calibrated prediction ms | calibrated error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tail = ["", f"Amortised step, {len(errs)} rows: median |error| {statistics.median(errs):.1%}, worst "
                f"{max(errs):.1%}; load-adjusted: median {statistics.median(adj_errs):.1%}, worst {max(adj_errs):.1%}; "
                f"calibrated (profiles.calibrate): median {statistics.median(cal_errs):.1%}, worst {max(cal_errs):.1%}. "
                f"Goal: median ≤ 10%, worst ≤ 25%."]
    text = "\n".join(head + rows + tail) + "\n"
    print(tail[-1])
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
