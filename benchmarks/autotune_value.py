"""Does the autotuned plan train better than what a practitioner would pick by hand, at the same memory?

Two real tasks (``tasks.py``; no downloads):
- lm: the byte-level CharLM (d=128, 2 layers, context 64, batch 16) on the Python standard library's source;
- digits: a 64-128-128-10 tanh MLP on sklearn's digits (batch 64).

One memory budget per task, BUDGET_VS_ADAM × all-Adam's peak (parameters + gradients + state + workspace), and
four optimizers, each trained STEPS steps from the same initialisation and data for each of SEEDS seeds:
(a) AdamW (torch.optim.AdamW);
(b) the best single-method uniform configuration that fits the budget (highest predicted score among Adam,
    Shampoo, blocked Shampoo B ∈ UNIFORM_BLOCKS and Sketchy k ∈ UNIFORM_RANKS with Adam or Adafactor grafting);
(c) the default plan: ``make_plan(model, budget, hardware="auto", tokens_per_step=TOKENS)`` with the default grid
    and the default time bound (the larger of 3× all-Adam's predicted step and 25% of the predicted
    forward+backward at the task's tokens per step; ``planner.time_bound``);
(d) the spectrum plan: (c) with ``spectrum=`` a ``probe`` of PROBE_STEPS AdamW steps (FD rank PROBE_RANK).
The same learning rate for all (every matrix method is grafted onto Adam's step size), cosine schedule.

Measured: validation loss every EVAL_EVERY steps and the training wall-clock up to it (evaluation excluded).
"Equal steps": validation loss after STEPS steps. "Equal wall-clock": per seed, T = the least total training time
of the four; each optimizer's validation loss at its last checkpoint within T. The four configurations are run
interleaved (seed-major), so load changes on the shared machine hit all alike; the load average is recorded.

Run: ``python benchmarks/autotune_value.py`` (STEPS, SEEDS overridable by environment); writes
benchmarks/results/autotune_value.md and autotune_value.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tasks import CharLM, char_batches, cosine_lr, digits, lm_eval, lm_loss, stdlib_corpus  # noqa: E402

from sketchplan.build import build_optimizer  # noqa: E402
from sketchplan.methods import MethodConfig, OptimizerDefaults  # noqa: E402
from sketchplan.planner import make_plan, plan_from_configs  # noqa: E402
from sketchplan.planner.probe import probe  # noqa: E402

torch.set_num_threads(1)
STEPS = {"lm": int(os.environ.get("LM_STEPS", 300)), "digits": int(os.environ.get("DIGITS_STEPS", 300))}
SEEDS = [int(s) for s in os.environ.get("SEEDS", "0,1,2").split(",")]
EVAL_EVERY = {"lm": 20, "digits": 20}
LR = {"lm": 2e-3, "digits": 3e-2}  # the best AdamW learning rates of benchmarks/results/quality.md
BUDGET_VS_ADAM = 1.5
UNIFORM_RANKS = (4, 8, 16, 32, 64)
UNIFORM_BLOCKS = (32, 64)
PROBE_STEPS, PROBE_RANK = 30, 32
TOKENS = {"lm": 16 * 64, "digits": 64}  # tokens (samples × positions) per training step
ARMS = ("(a) AdamW", "(b) best uniform", "(c) default plan", "(d) spectrum plan")


def opts(task: str) -> OptimizerDefaults:
    return OptimizerDefaults(lr=LR[task], betas=(0.9, 0.999), weight_decay=0.0, shampoo_eps=1e-6,
                             precondition_frequency=10)


class Task:
    def __init__(self, name: str):
        self.name = name
        if name == "lm":
            self.train_data, self.val_data = stdlib_corpus()
        else:
            self.xt, self.yt, self.xv, self.yv = digits(seed=0)

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.name == "lm":
            return CharLM(d=128, layers=2, heads=4, context=64)
        return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))

    def batches(self, seed: int):
        if self.name == "lm":
            yield from char_batches(self.train_data, 16, 64, 1000 + seed)
        g = torch.Generator().manual_seed(1000 + seed)
        while True:
            ix = torch.randint(len(self.xt), (64,), generator=g)
            yield self.xt[ix], self.yt[ix]

    def loss(self, m, b):
        if self.name == "lm":
            return lm_loss(m, b)
        return F.cross_entropy(m(b[0]), b[1])

    @torch.no_grad()
    def val(self, m) -> float:
        if self.name == "lm":
            return lm_eval(m, self.val_data, 64, batches=8, batch=32)
        return float(F.cross_entropy(m(self.xv), self.yv))


def plans(task: Task) -> dict:
    """The budget and the plans of (b), (c), (d) for ``task`` (seed 0's model; the shapes are the same)."""
    o = opts(task.name)
    meta = task.model(0)
    adam = plan_from_configs(meta, MethodConfig(method="adam"), o, hardware="auto")
    budget = int(BUDGET_VS_ADAM * adam.totals.peak_bytes)
    uniform = [MethodConfig(method="adam"), MethodConfig(method="shampoo")]
    for graft, mom in (("adam", "float32"), ("adafactor", "bfloat16")):
        uniform += [MethodConfig(method="shampoo", graft=graft, momentum=mom)]
        uniform += [MethodConfig(method="blocked_shampoo", block_size=b, graft=graft, momentum=mom)
                    for b in UNIFORM_BLOCKS]
        uniform += [MethodConfig(method="sketchy", rank=k, graft=graft, momentum=mom) for k in UNIFORM_RANKS]
    fits = [(plan_from_configs(meta, c, o, hardware="auto"), c) for c in uniform]
    fits = [(p, c) for p, c in fits if p.totals.peak_bytes <= budget]
    best_uniform = max(fits, key=lambda pc: pc[0].totals.score)[0]
    default = make_plan(meta, budget, defaults=o, hardware="auto", tokens_per_step=TOKENS[task.name])
    t = time.perf_counter()
    spectra = probe(task.model(0), task.loss, task.batches(99), steps=PROBE_STEPS, rank=PROBE_RANK, lr=LR[task.name])
    probe_s = time.perf_counter() - t
    spectrum = make_plan(meta, budget, defaults=o, hardware="auto", spectrum=spectra,
                         tokens_per_step=TOKENS[task.name])
    return {"budget": budget, "adam": adam, "(b) best uniform": best_uniform, "(c) default plan": default,
            "(d) spectrum plan": spectrum, "probe_s": probe_s}


def train(task: Task, arm: str, plan, seed: int) -> dict:
    model = task.model(seed)
    if arm == "(a) AdamW":
        opt = torch.optim.AdamW(model.parameters(), lr=LR[task.name], betas=(0.9, 0.999), weight_decay=0.0)
    else:
        opt = build_optimizer(plan, model)
    steps = STEPS[task.name]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, 20))
    it = task.batches(seed)
    clock, curve, step_times = 0.0, [(0, 0.0, task.val(model))], []
    for step in range(1, steps + 1):
        batch = next(it)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, batch)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        sched.step()
        t2 = time.perf_counter()
        clock += t2 - t0
        step_times.append(t2 - t1)
        if step % EVAL_EVERY[task.name] == 0 or step == steps:
            curve.append((step, clock, task.val(model)))
    return {"curve": curve, "train_s": clock, "opt_step_ms": 1e3 * statistics.median(step_times),
            "final_val": curve[-1][2]}


def at_time(curve, t: float) -> float:
    return [v for _, c, v in curve if c <= t + 1e-12][-1]


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    except OSError:
        return "n/a"


def main() -> None:
    t_start = time.time()
    loads = [load()]
    tasks = {n: Task(n) for n in ("lm", "digits")}
    info = {n: plans(t) for n, t in tasks.items()}
    runs: dict = {n: {a: [] for a in ARMS} for n in tasks}
    for seed in SEEDS:
        for n, task in tasks.items():
            for arm in ARMS:
                r = train(task, arm, info[n].get(arm), seed)
                runs[n][arm].append(r)
                print(f"{n} seed {seed} {arm}: val {r['final_val']:.4f}, train {r['train_s']:.1f} s, "
                      f"opt.step {r['opt_step_ms']:.2f} ms", flush=True)
        loads.append(load())
    lines = [f"Measured on {platform.processor() or platform.machine()} ({os.cpu_count()} cores, shared), "
             f"torch.set_num_threads(1), torch {torch.__version__}; {len(SEEDS)} seeds, configurations interleaved; "
             f"load average (1, 5, 15 min) at start and after each seed: {' | '.join(loads)}. "
             f"Wall time {(time.time() - t_start) / 60:.1f} min.", ""]
    summary = {}
    for n, task in tasks.items():
        inf = info[n]
        lines += [f"## {n}: {STEPS[n]} steps, lr {LR[n]}, memory budget {inf['budget']:,} B "
                  f"({BUDGET_VS_ADAM}× all-Adam's peak), probe {PROBE_STEPS} steps in {inf['probe_s']:.0f} s", "",
                  f"Default time bound of (c): {inf['(c) default plan'].budget.time_budget_ms:.3f} ms "
                  f"({inf['(c) default plan'].budget.time_budget_source}).", ""]
        lines += ["| optimizer | configuration | predicted score | state (B) | predicted step (ms) | "
                  "measured opt.step median (ms) | val loss @ equal steps | val loss @ equal wall-clock | "
                  "train time (s) |", "|---|---|---|---|---|---|---|---|---|"]
        t_eq = [min(runs[n][a][i]["train_s"] for a in ARMS) for i in range(len(SEEDS))]
        summary[n] = {}
        for arm in ARMS:
            rs = runs[n][arm]
            p = inf["adam"] if arm == "(a) AdamW" else inf[arm]
            steps_v = [r["final_val"] for r in rs]
            time_v = [at_time(r["curve"], t_eq[i]) for i, r in enumerate(rs)]
            methods = {}
            for e in p.tensors:
                if e.method:
                    lab = e.config().label()
                    methods[lab] = methods.get(lab, 0) + 1
            conf = "AdamW" if arm == "(a) AdamW" else ", ".join(f"{k} ×{v}" for k, v in
                                                                  sorted(methods.items(), key=lambda kv: -kv[1]))
            ms = lambda xs: f"{statistics.mean(xs):.4f} ± {statistics.pstdev(xs):.4f}"  # noqa: E731
            summary[n][arm] = {"score": p.totals.score, "steps": statistics.mean(steps_v),
                               "time": statistics.mean(time_v)}
            lines.append(f"| {arm} | {conf} | {p.totals.score:.4f} | {p.totals.state_bytes:,} | "
                         f"{p.totals.step_ms:.3f} | {statistics.median(r['opt_step_ms'] for r in rs):.3f} | "
                         f"{ms(steps_v)} | {ms(time_v)} | {statistics.mean(r['train_s'] for r in rs):.1f} |")
        lines.append("")
        best_plan = min(ARMS[2:], key=lambda a: summary[n][a]["time"])
        beats = all(summary[n][best_plan]["time"] < summary[n][a]["time"] for a in ARMS[:2])
        order_score = sorted(ARMS, key=lambda a: -summary[n][a]["score"])
        order_loss = sorted(ARMS, key=lambda a: summary[n][a]["steps"])
        lines += [f"Goal (c) or (d) beats (a) and (b) at equal wall-clock: **{'met' if beats else 'NOT met'}** "
                  f"(best plan {best_plan}: {summary[n][best_plan]['time']:.4f}).",
                  f"Ranking by predicted score: {' > '.join(order_score)}; by validation loss at equal steps: "
                  f"{' > '.join(order_loss)}.", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "autotune_value.md").write_text("# Value of the autotuned plan at equal memory\n\n" + text)
    (out / "autotune_value.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
