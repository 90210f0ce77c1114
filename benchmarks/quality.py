"""Quality and speed of the optimizers against peers on small real tasks (issue 7).

Tasks (no downloads: data that Python and scikit-learn ship):

(a) ``lm``: the byte-level transformer ``tasks.CharLM`` (d = 128, 2 layers, 4 heads, context 64, batch 16) on the
    Python standard library's source text, validation on held-out stdlib files;
(b) ``digits``: a 64-128-128-10 tanh MLP on scikit-learn's 8×8 digits (minibatches of 64, 20% held out);
(c) ``quad``: the ill-conditioned quadratic of KrADagrad's paper (Mei et al. 2023), f(X) = Σ X ⊙ (H₀ X H₁) with
    Hᵢ = Qᵢ diag(λ) Qᵢᵀ, λ log-spaced from 1 to 1e-4 (condition 1e4 per factor), X of QUAD_N × QUAD_N, in
    float32 and in float64; the loss reported is f(X_T) / f(X_0).

Methods: torch AdamW, our Adam, Shampoo, blocked Shampoo, Sketchy (ranks 16/64/256, k_i = min(k, d_i) per axis),
extreme tensoring, KrADagrad (``mm``) and KrADagrad* (``star``), SOAP (issue 19b), and as external peers the Shampoo of
``pytorch-optimizer`` (``Shampoo`` and the grafted, blocked ``ScalableShampoo``), heavyball's ``KLShampoo`` (the
only Shampoo heavyball 3.2.1 ships) and heavyball's ``SOAP``. The peers are installed only for this benchmark (benchmarks/requirements.txt).

Protocol (the same budget for every method): LR_GRID learning rates per method (three, documented in
``methods()``), each run for STEPS steps on seed 0; the best by final train loss (validation loss on the LM and the
digits are reported, never used to select) is then run on further seeds, so the best learning rate has
SEEDS seeds (seed 0 reused). Cosine schedule with 20 warm-up steps (none on the quadratic), no weight decay.
For every run: the final train loss (mean of the last 20 steps), the validation loss, the optimizer-state bytes
summed over every tensor in ``optimizer.state`` after training (nested containers and the peers' helper objects
walked, each storage counted once), the part of it that is preconditioner (statistics, roots, sketches, Q/GG) and
the median time of ``optimizer.step()`` measured apart from forward/backward, all in one process.

Run: ``python benchmarks/quality.py`` (about 30 minutes on 2 CPU cores). Tiny settings for development:
``QUAL_STEPS=20 QUAL_SEEDS=1 QUAL_TASKS=digits python benchmarks/quality.py``. Environment variables:
QUAL_TASKS (lm,digits,quad), QUAL_METHODS (comma-separated subset of method names), QUAL_STEPS (override all
tasks' steps), QUAL_SEEDS (3), QUAL_OUT (benchmarks/results). Writes QUAL_OUT/quality.md, quality.json and
quality_*.png.
"""

from __future__ import annotations

import enum
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tasks import CharLM, char_batches, cosine_lr, digits, lm_eval, lm_loss, stdlib_corpus  # noqa: E402

from sketchplan.build import build_optimizer  # noqa: E402
from sketchplan.methods import MethodConfig, OptimizerDefaults  # noqa: E402
from sketchplan.planner import plan_from_configs  # noqa: E402

torch.set_num_threads(int(os.environ.get("QUAL_THREADS", 1)))
warnings.filterwarnings("ignore", category=UserWarning)

TASKS = os.environ.get("QUAL_TASKS", "lm,digits,quad").split(",")
ONLY = [m for m in os.environ.get("QUAL_METHODS", "").split(",") if m]
SEEDS = int(os.environ.get("QUAL_SEEDS", 3))
OUT = Path(os.environ.get("QUAL_OUT", Path(__file__).parent / "results"))
_STEPS = os.environ.get("QUAL_STEPS")
STEPS = {"lm": 150, "digits": 300, "quad": 150}
if _STEPS:
    STEPS = {k: int(_STEPS) for k in STEPS}
QUAD_N = int(os.environ.get("QUAD_N", 256))
# The quadratic uses the library default ridge (OptimizerDefaults.shampoo_eps), where float32 roundoff matters.
QUAD_EPS = float(os.environ.get("QUAD_EPS", 1e-12))
LM_BATCH = int(os.environ.get("LM_BATCH", 16))
LOG_EVERY = 10
# Sketchy's FD update (an SVD / eigh per axis) runs every SKETCHY_STATS_EVERY steps on the LM, the sampled
# gradient standing for the skipped ones (OptimizerDefaults.stats_every); every other method updates its
# statistics every step.
SKETCHY_STATS_EVERY = int(os.environ.get("SKETCHY_STATS_EVERY", 1))


# ----------------------------------------------------------------------------------------------------- tasks


@dataclass
class Task:
    name: str
    steps: int
    warmup: int
    make_model: Callable[[int], nn.Module]
    batches: Callable[[int], object]  # seed -> iterator of batches
    loss: Callable[[nn.Module, object], torch.Tensor]
    val: Callable[[nn.Module], float] | None
    dtype: torch.dtype = torch.float32


def lm_task() -> Task:
    train, val = stdlib_corpus()

    def make(seed):
        torch.manual_seed(seed)
        return CharLM(d=128, layers=2, heads=4, context=64)

    return Task("lm", STEPS["lm"], 20, make, lambda s: char_batches(train, LM_BATCH, 64, 1000 + s), lm_loss,
                lambda m: lm_eval(m, val, 64, batches=8, batch=32))


def digits_task() -> Task:
    xt, yt, xv, yv = digits(seed=0)

    def make(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))

    def batches(seed):
        g = torch.Generator().manual_seed(1000 + seed)
        while True:
            ix = torch.randint(len(xt), (64,), generator=g)
            yield xt[ix], yt[ix]

    def loss(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    @torch.no_grad()
    def val(m):
        return float(F.cross_entropy(m(xv), yv))

    return Task("digits", STEPS["digits"], 20, make, batches, loss, val)


class Quadratic(nn.Module):
    """f(X) = Σ X ⊙ (H₀ X H₁) (Mei et al. 2023), normalised by f(X₀); X₀ ~ N(0, 1) from the seed."""

    def __init__(self, n: int, seed: int, dtype: torch.dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)  # the same problem for every seed; the seed draws X₀
        lam = torch.logspace(0, -4, n, dtype=torch.float64)
        hs = []
        for _ in range(2):
            q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
            hs.append((q * lam) @ q.T)
        self.register_buffer("h0", hs[0].to(dtype))
        self.register_buffer("h1", hs[1].to(dtype))
        x0 = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.f0 = float((x0 * (hs[0] @ x0 @ hs[1])).sum())
        self.x = nn.Parameter(x0.to(dtype))

    def forward(self):
        return (self.x * (self.h0 @ self.x @ self.h1)).sum() / self.f0


def quad_task(dtype: torch.dtype) -> Task:
    def loss(m, _):
        return m()

    def batches(seed):
        while True:
            yield None

    tag = "quad32" if dtype == torch.float32 else "quad64"
    return Task(tag, STEPS["quad"], 0, lambda s: Quadratic(QUAD_N, s, dtype), batches, loss, None, dtype)


# --------------------------------------------------------------------------------------------------- methods

LM_LRS = [2e-3, 6e-3, 2e-2]
LRS = {  # per task family: the three learning rates every Adam-scaled (grafted) method sweeps
    "lm": LM_LRS, "digits": [1e-2, 3e-2, 1e-1], "quad": [3e-2, 1e-1, 3e-1],
}


def _ours(method_cfg: MethodConfig | None, task: Task, **opts) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
    """Our optimizer from a plan: matrices get ``method_cfg`` (None: Adam everywhere), vectors Adam."""

    def make(model, lr):
        state_dtype = "float64" if task.dtype == torch.float64 else "float32"
        eps = QUAD_EPS if task.name.startswith("quad") else 1e-6
        defaults = OptimizerDefaults(lr=lr, betas=(0.9, 0.999), weight_decay=0.0, state_dtype=state_dtype,
                                     precondition_frequency=10, shampoo_eps=eps, **opts)
        adam = MethodConfig(method="adam")
        cfgs = {n: (method_cfg if (method_cfg is not None and p.dim() >= 2) else adam)
                for n, p in model.named_parameters()}
        return build_optimizer(plan_from_configs(model, cfgs, defaults), model)

    return make


def methods(task: Task) -> dict[str, tuple[list[float], Callable]]:
    """name -> (learning-rate grid, factory(model, lr)). Every method sweeps three learning rates."""
    fam = "quad" if task.name.startswith("quad") else task.name
    lrs = LRS[fam]
    et_lrs = [10 * x for x in lrs]  # extreme tensoring takes AdaGrad-sized steps (docs/optimizers.md)
    mat = dict(graft="adam", momentum="float32")
    sk_every = SKETCHY_STATS_EVERY if task.name == "lm" else 1
    out: dict[str, tuple[list[float], Callable]] = {
        "AdamW (torch)": (lrs, lambda m, lr: torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.999),
                                                              weight_decay=0.0)),
        "Adam (ours)": (lrs, _ours(None, task)),
        "Shampoo": (lrs, _ours(MethodConfig(method="shampoo", **mat), task)),
        "blocked Shampoo B=64": (lrs, _ours(MethodConfig(method="blocked_shampoo", block_size=64, **mat), task)),
    }
    for k in (16, 64, 256):
        if task.name.startswith("quad") or task.name == "lm" or k <= 128:
            out[f"Sketchy k={k}"] = (lrs, _ours(MethodConfig(method="sketchy", rank=k, **mat), task,
                                                stats_every=sk_every))
    out["extreme tensoring"] = (et_lrs, _ours(MethodConfig(method="extreme_tensoring"), task))
    out["KrADagrad (mm)"] = (lrs, _ours(MethodConfig(method="kradagrad", **mat), task, kradagrad_variant="mm"))
    out["KrADagrad* (star)"] = (lrs, _ours(MethodConfig(method="kradagrad", **mat), task,
                                           kradagrad_variant="star"))
    # issue 19b: SOAP (Adam in the eigenbasis of Shampoo's factors), basis refreshed every 10 steps like the roots
    out["SOAP (ours)"] = (lrs, _ours(MethodConfig(method="soap", momentum="float32"), task))
    out.update(soap_adafactor_lion_muon_rows(task, lrs))
    out.update(peers(task, lrs))
    if ONLY:
        out = {k: v for k, v in out.items() if k in ONLY}
    return out


# ---- issue 19 part A: the methods people pick instead (Adafactor, Lion, Muon, 8-bit Adam) and their peers ----

def muon_targets(model: nn.Module) -> set[str]:
    """Names of the matrices Muon trains: every ≥2-D weight except embeddings and the output head (the last
    Linear), which its authors train with AdamW (Jordan et al. 2024)."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) > 1:
        skip.add(id(linears[-1].weight))
    return {n for n, p in model.named_parameters() if p.dim() >= 2 and id(p) not in skip}


def _ours_by_name(pick: Callable[[nn.Module], dict], task: Task, **opts):
    """Our optimizer from a plan giving each tensor ``pick(model)[name]`` (Adam where it has none)."""

    def make(model, lr):
        state_dtype = "float64" if task.dtype == torch.float64 else "float32"
        defaults = OptimizerDefaults(lr=lr, betas=(0.9, 0.999), weight_decay=0.0, state_dtype=state_dtype, **opts)
        chosen = pick(model)
        cfgs = {n: chosen.get(n, MethodConfig(method="adam")) for n, _ in model.named_parameters()}
        return build_optimizer(plan_from_configs(model, cfgs, defaults), model)

    return make


class _Both:
    """Two torch optimizers stepped as one (torch's Muon for the hidden matrices, AdamW for the rest)."""

    def __init__(self, *opts):
        self.opts = opts
        self.param_groups = [g for o in opts for g in o.param_groups]

    @property
    def state(self):
        return {k: v for o in self.opts for k, v in o.state.items()}

    def zero_grad(self, set_to_none=True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.opts:
            o.step()


def soap_adafactor_lion_muon_rows(task: Task, lrs: list[float]) -> dict[str, tuple[list[float], Callable]]:
    """Ours: Adafactor (torch.optim.Adafactor's algorithm) on every tensor, Lion, Muon (hidden matrices, Adam on
    the rest), 8-bit Adam (int8 moments, ``methods.compression``); peers: torch.optim.Adafactor, torch.optim.Muon
    (+ AdamW), pytorch-optimizer's Lion and AdaFactor. Same learning-rate grid as Adam: our Lion scales it by
    ``lion_lr_ratio`` (0.3) and pytorch-optimizer's Lion gets the same scaled grid; both Muons use the AdamW-matched
    update scale (``match_rms_adamw``)."""
    ada, lion = MethodConfig(method="adafactor", momentum="none"), MethodConfig(method="lion")
    muon = MethodConfig(method="muon")
    adam8 = MethodConfig(method="adam", momentum="int8", compress="int8")
    every = lambda cfg: (lambda m: {n: cfg for n, _ in m.named_parameters()})  # noqa: E731
    out: dict[str, tuple[list[float], Callable]] = {
        "Adafactor (ours)": (lrs, _ours_by_name(every(ada), task)),
        "Adafactor (torch)": (lrs, lambda m, lr: torch.optim.Adafactor(m.parameters(), lr=lr, weight_decay=0.0)),
        "Lion (ours)": (lrs, _ours_by_name(every(lion), task)),
        "Muon (ours)": (lrs, _ours_by_name(lambda m: {n: muon for n in muon_targets(m)}, task)),
        "8-bit Adam (ours)": (lrs, _ours_by_name(every(adam8), task)),
    }

    def torch_muon(m, lr):
        names = muon_targets(m)
        hidden = [p for n, p in m.named_parameters() if n in names]
        rest = [p for n, p in m.named_parameters() if n not in names]
        opts = [torch.optim.Muon(hidden, lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")]
        if rest:
            opts.append(torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.999), weight_decay=0.0))
        return _Both(*opts)

    out["Muon (torch) + AdamW"] = (lrs, torch_muon)
    try:
        from pytorch_optimizer import AdaFactor as POAdaFactor
        from pytorch_optimizer import Lion as POLion

        out["pytorch-optimizer Lion"] = ([0.3 * x for x in lrs], lambda m, lr: POLion(
            m.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0))
        out["pytorch-optimizer AdaFactor"] = (lrs, lambda m, lr: POAdaFactor(m.parameters(), lr=lr, weight_decay=0.0))
    except ImportError:
        print("pytorch-optimizer not installed: its Lion/AdaFactor are skipped")
    return out


def peers(task: Task, lrs: list[float]) -> dict[str, tuple[list[float], Callable]]:
    out: dict[str, tuple[list[float], Callable]] = {}
    try:
        from pytorch_optimizer import ScalableShampoo
        from pytorch_optimizer import Shampoo as POShampoo
        from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

        out["pytorch-optimizer ScalableShampoo"] = (lrs, lambda m, lr: ScalableShampoo(
            m.parameters(), lr=lr, betas=(0.9, 0.999), moving_average_for_momentum=True, weight_decay=0.0,
            start_preconditioning_step=1, preconditioning_compute_steps=10, block_size=512,
            graft_type=LayerWiseGrafting.RMSPROP, nesterov=False, matrix_eps=1e-6))
        # No grafting and no normalisation: diverged at the Adam grid's top LR on (b) in development, so its grid is a third of it.
        # Not on the LM: it diverged there at all three learning rates in development (its inverse roots are zero
        # until the first refresh, then (GGᵀ + 1e-6 I)^(-1/4) of rarely-seen embedding rows explodes).
        if task.name != "lm":
            out["pytorch-optimizer Shampoo"] = ([x / 3 for x in lrs], lambda m, lr: POShampoo(
                m.parameters(), lr=lr, momentum=0.9, weight_decay=0.0, preconditioning_compute_steps=10,
                matrix_eps=1e-6))
    except ImportError:
        print("pytorch-optimizer not installed: its Shampoo is skipped (pip install -r benchmarks/requirements.txt)")
    try:
        import heavyball
        import heavyball.utils

        heavyball.utils.compile_mode = None  # no torch.compile (no C++ toolchain needed, fair CPU timing)
        out["heavyball KLShampoo"] = (lrs, lambda m, lr: heavyball.KLShampoo(
            m.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=10,
            compile_step=False, storage_dtype="float64" if task.dtype == torch.float64 else "float32"))
        # issue 19b: heavyball's SOAP with the common protocol's betas (its shampoo_beta, the factors' EMA, = β2
        # as ours), a refresh every 10 steps (no schedule), no torch.compile
        out["heavyball SOAP"] = (lrs, lambda m, lr: heavyball.SOAP(
            m.parameters(), lr=lr, betas=(0.9, 0.999), shampoo_beta=0.999, weight_decay=0.0,
            precondition_frequency=10, use_precond_schedule=False, compile_step=False,
            storage_dtype="float64" if task.dtype == torch.float64 else "float32"))
    except ImportError:
        print("heavyball not installed: its Shampoo is skipped (pip install -r benchmarks/requirements.txt)")
    return out


# ---------------------------------------------------------------------------------------- state measurement

PRECOND_KEYS = ("blocks", "pre_cond", "statistics", "preconditioners", "_Q_", "_GG_")


def state_tensors(opt: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """Every tensor reachable from ``opt.state`` (dicts, lists, and the peers' helper objects), with its path."""
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()

    def walk(v, path, depth):
        if depth > 8:
            return
        if torch.is_tensor(v):
            out.append((path, v))
        elif isinstance(v, dict):
            for k, w in v.items():
                walk(w, f"{path}.{k}", depth + 1)
        elif isinstance(v, (list, tuple)):
            for i, w in enumerate(v):
                walk(w, f"{path}_{i}", depth + 1)
        elif (hasattr(v, "__dict__") and not isinstance(v, (enum.Enum, type))
              and type(v).__module__.split(".")[0] in ("pytorch_optimizer", "heavyball")):
            if id(v) not in seen:
                seen.add(id(v))
                for k, w in vars(v).items():
                    walk(w, f"{path}.{k}", depth + 1)

    for i, (_, st) in enumerate(opt.state.items()):
        walk(st, f"p{i}", 0)
    return out


def state_bytes(opt: torch.optim.Optimizer) -> tuple[int, int]:
    """(all optimizer-state bytes, preconditioner bytes), each storage counted once."""
    total, precond, storages = 0, 0, set()
    for path, t in state_tensors(opt):
        key = (t.untyped_storage().data_ptr(), t.device.type)
        if key in storages:
            continue
        storages.add(key)
        nb = t.untyped_storage().nbytes()
        total += nb
        if any(s in path for s in PRECOND_KEYS) and not path.endswith("exp_avg_sq"):  # SOAP's V is Adam's moment
            precond += nb
    return total, precond


# ------------------------------------------------------------------------------------------------ training


@dataclass
class Run:
    train: float
    val: float | None
    curve: list[float]
    state: int
    precond: int
    step_ms: float
    fb_ms: float
    finite: bool
    extra: dict = field(default_factory=dict)


def train(task: Task, make_opt: Callable, lr: float, seed: int) -> Run:
    model = make_opt_model = task.make_model(seed)
    del make_opt_model
    opt = make_opt(model, lr)
    base = [g["lr"] for g in opt.param_groups]
    it = task.batches(seed)
    losses, curve, step_t, fb_t = [], [], [], []
    finite = True
    for s in range(task.steps):
        f = cosine_lr(s, task.steps, task.warmup) if task.warmup else 0.5 * (1 + math.cos(math.pi * s / task.steps))
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, next(it))
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        fb_t.append(t1 - t0)
        step_t.append(t2 - t1)
        v = float(loss.detach())
        if not math.isfinite(v):
            finite = False
            losses.append(float("nan"))
            break
        losses.append(v)
        if (s + 1) % LOG_EVERY == 0:
            curve.append(sum(losses[-LOG_EVERY:]) / LOG_EVERY)
    final_n = 1 if task.name.startswith("quad") else 20
    tr = sum(losses[-final_n:]) / len(losses[-final_n:]) if finite else float("nan")
    params_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    finite = finite and params_finite
    va = task.val(model) if (task.val and finite) else None
    if task.name.startswith("quad") and finite:
        with torch.no_grad():
            tr = float(task.loss(model, None))
    total, precond = state_bytes(opt)
    warm = step_t[min(5, len(step_t) - 1):] or step_t
    return Run(tr, va, curve, total, precond, 1e3 * statistics.median(warm),
               1e3 * statistics.median(fb_t[min(5, len(fb_t) - 1):] or fb_t), finite)


def score(r: Run) -> float:
    return r.train if (r.finite and math.isfinite(r.train)) else float("inf")


def run_task(task: Task, log) -> dict:
    res = {}
    for name, (lrs, make) in methods(task).items():
        t0 = time.perf_counter()
        sweep = {}
        for lr in lrs:
            try:
                sweep[lr] = train(task, make, lr, 0)
            except Exception as e:  # a peer that fails on a shape is reported, not fatal
                log(f"  {task.name} {name} lr={lr}: FAILED {type(e).__name__}: {e}")
                sweep[lr] = None
        ok = {lr: r for lr, r in sweep.items() if r is not None}
        if not ok:
            res[name] = None
            continue
        best = min(ok, key=lambda lr: score(ok[lr]))
        runs = [ok[best]]
        for seed in range(1, SEEDS):
            runs.append(train(task, make, best, seed))
        res[name] = dict(lrs=lrs, sweep={str(lr): (score(r) if r else None) for lr, r in sweep.items()},
                         best_lr=best, runs=[r.__dict__ for r in runs])
        tr = [r.train for r in runs]
        log(f"  {task.name:7s} {name:34s} lr={best:<7g} train {stat(tr)} val "
            f"{stat([r.val for r in runs])} state {runs[0].state:>10,} B step {runs[0].step_ms:7.2f} ms "
            f"({time.perf_counter() - t0:.0f} s)")
    return res


# ------------------------------------------------------------------------------------------------- report


def stat(xs) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if any(not math.isfinite(x) for x in xs):
        return "diverged"
    m = sum(xs) / len(xs)
    spread = (max(xs) - min(xs)) / 2
    return f"{m:.4f} ± {spread:.4f}" if m >= 1e-3 else f"{m:.3e} ± {spread:.1e}"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs and all(math.isfinite(x) for x in xs) else float("nan")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for mod in ("heavyball", "pytorch_optimizer"):
        try:
            from importlib.metadata import version
            versions.append(f"{mod} {version(mod.replace('_', '-'))}")
        except Exception:
            versions.append(f"{mod} not installed")
    return (f"{cpu}, {os.cpu_count()} cores visible, torch.set_num_threads({torch.get_num_threads()}), "
            f"torch {torch.__version__}, Python {platform.python_version()}, " + ", ".join(versions))


def table(task_name: str, res: dict) -> list[str]:
    quad = task_name.startswith("quad")
    head = ("| method | LR sweep (final train loss per LR, seed 0) | best LR | "
            + ("f(X_T)/f(X_0)" if quad else "final train loss | validation loss")
            + " | optimizer state (bytes) | of which preconditioner | optimizer.step() median (ms) | "
              "forward+backward median (ms) |")
    cols = head.count("|") - 1
    lines = [head, "|" + "---|" * cols]
    for name, r in res.items():
        if r is None:
            lines.append(f"| {name} | failed |" + " |" * (cols - 2))
            continue
        runs = r["runs"]
        sweep = ", ".join(f"{float(lr):g}: " + (f"{v:.4g}" if v is not None and math.isfinite(v) else "div.")
                          for lr, v in r["sweep"].items())
        loss = stat([x["train"] for x in runs])
        if not quad:
            loss += " | " + stat([x["val"] for x in runs])
        lines.append(f"| {name} | {sweep} | {r['best_lr']:g} | {loss} | {runs[0]['state']:,} | "
                     f"{runs[0]['precond']:,} | {statistics.median(x['step_ms'] for x in runs):.2f} | "
                     f"{statistics.median(x['fb_ms'] for x in runs):.2f} |")
    return lines


def plots(all_res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    names = [t for t in all_res if all_res[t]]
    if not names:
        return files
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, t in zip(axes[0], names):
        for name, r in all_res[t].items():
            if r is None:
                continue
            curves = [x["curve"] for x in r["runs"] if x["finite"]]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            y = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
            ax.plot([LOG_EVERY * (i + 1) for i in range(n)], y, label=name,
                    ls="--" if ("heavyball" in name or "pytorch-optimizer" in name or "torch" in name) else "-")
        ax.set_title(f"{t}: train loss (mean of seeds, best LR)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    p = out / "quality_loss.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    files.append(p.name)

    fr = [t for t in names if not t.startswith("quad")]
    if fr:
        fig, axes = plt.subplots(1, len(fr), figsize=(6.5 * len(fr), 4.8), squeeze=False)
        for ax, t in zip(axes[0], fr):
            for name, r in all_res[t].items():
                if r is None:
                    continue
                v = mean([x["val"] for x in r["runs"]])
                if not math.isfinite(v):
                    continue
                ax.scatter(r["runs"][0]["state"], v, marker="s" if "heavyball" in name or "pytorch" in name else "o")
                ax.annotate(name, (r["runs"][0]["state"], v), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("optimizer state (bytes, measured)")
            ax.set_ylabel("final validation loss (mean of seeds)")
            ax.set_title(f"{t}: memory / quality frontier")
        fig.tight_layout()
        p = out / "quality_frontier.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p.name)
    return files


def goals(all_res: dict) -> list[str]:
    lines = []

    def get(t, m):
        r = all_res.get(t, {}).get(m)
        return r

    def val(t, m, key="val"):
        r = get(t, m)
        return mean([x[key] for x in r["runs"]]) if r else float("nan")

    lm = all_res.get("lm")
    if lm and get("lm", "Shampoo"):
        sh_v, sh_p = val("lm", "Shampoo"), get("lm", "Shampoo")["runs"][0]["precond"]
        for k in (16, 64, 256):
            r = get("lm", f"Sketchy k={k}")
            if not r:
                continue
            v, p = val("lm", f"Sketchy k={k}"), r["runs"][0]["precond"]
            frac, gap = p / sh_p, (v - sh_v) / sh_v
            ok = frac <= 0.25 and gap <= 0.02
            lines.append(f"- (a) Sketchy k={k}: preconditioner {p:,} B = {100 * frac:.1f}% of Shampoo's {sh_p:,} B; "
                         f"validation {v:.4f} vs Shampoo {sh_v:.4f} ({100 * gap:+.2f}%) — "
                         f"{'met' if ok else 'NOT met'} (goal: ≤ 25% memory and ≤ +2% loss).")
    for t in ("lm", "digits"):
        if not all_res.get(t) or not get(t, "AdamW (torch)"):
            continue
        a = val(t, "AdamW (torch)")
        for m in [x for x in all_res[t] if x == "Shampoo" or x.startswith("Sketchy")]:
            v = val(t, m)
            lines.append(f"- ({'a' if t == 'lm' else 'b'}) {m} validation {v:.4f} vs AdamW {a:.4f}: "
                         f"{'ahead' if v < a else 'NOT ahead'} ({100 * (v - a) / a:+.2f}%).")
    for t in ("lm", "digits", "quad32", "quad64"):
        if not all_res.get(t) or not get(t, "Shampoo"):
            continue
        key = "train" if t.startswith("quad") else "val"
        ours = val(t, "Shampoo", key)
        for m in [x for x in all_res[t] if ("heavyball" in x or "pytorch-optimizer" in x) and "SOAP" not in x]:
            v = val(t, m, key)
            ok = not math.isfinite(v) or ours <= v
            lines.append(f"- ({t}) our Shampoo {key} {ours:.4g} vs {m} {v:.4g}: "
                         f"{'at least as good' if ok else 'WORSE'}"
                         + (f" ({100 * (ours - v) / v:+.2f}%)." if math.isfinite(v) and v else "."))
    for t in ("lm", "digits", "quad32", "quad64"):  # issue 19b: our SOAP against heavyball's
        if not get(t, "SOAP (ours)") or not get(t, "heavyball SOAP"):
            continue
        key = "train" if t.startswith("quad") else "val"
        ours, v = val(t, "SOAP (ours)", key), val(t, "heavyball SOAP", key)
        ok = not math.isfinite(v) or ours <= v
        lines.append(f"- ({t}) our SOAP {key} {ours:.4g} vs heavyball SOAP {v:.4g}: "
                     f"{'at least as good' if ok else 'WORSE'}"
                     + (f" ({100 * (ours - v) / v:+.2f}%)." if math.isfinite(v) and v else "."))
    if all_res.get("quad32"):
        for m in ("KrADagrad* (star)", "KrADagrad (mm)"):
            if not get("quad32", m) or not get("quad32", "Shampoo"):
                continue
            k32, s32 = val("quad32", m, "train"), val("quad32", "Shampoo", "train")
            s64 = val("quad64", "Shampoo", "train") if all_res.get("quad64") else float("nan")
            fin = all(x["finite"] for x in get("quad32", m)["runs"])
            lines.append(f"- (c) float32 {m}: finite {fin}, f/f0 {k32:.3e}; float32 Shampoo {s32:.3e} "
                         f"(float64 Shampoo {s64:.3e}) — KrADagrad {'beats' if k32 < s32 else 'does NOT beat'} "
                         "float32 Shampoo.")
    return lines


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    def log(s):
        print(s, flush=True)

    tasks = []
    if "lm" in TASKS:
        tasks.append(lm_task())
    if "digits" in TASKS:
        tasks.append(digits_task())
    if "quad" in TASKS:
        tasks += [quad_task(torch.float32), quad_task(torch.float64)]
    all_res, secs = {}, {}
    for task in tasks:
        t0 = time.perf_counter()
        log(f"task {task.name}: {task.steps} steps")
        all_res[task.name] = run_task(task, log)
        secs[task.name] = time.perf_counter() - t0
    total = time.perf_counter() - t_all
    (OUT / "quality.json").write_text(json.dumps(dict(machine=machine(), seeds=SEEDS, steps=STEPS,
                                                      results=all_res), indent=1))
    files = plots(all_res, OUT)
    desc = {
        "lm": f"(a) CharLM d=128, 2 layers, 4 heads, context 64, batch {LM_BATCH}, on the stdlib's source text (train "
              "loss: mean of the last 20 steps; validation: 8 batches of 32 from held-out stdlib files)",
        "digits": "(b) 64-128-128-10 tanh MLP on sklearn digits, batch 64 (validation: the held-out 20%)",
        "quad32": f"(c) quadratic f(X) = Σ X ⊙ (H₀ X H₁), X {QUAD_N}×{QUAD_N}, condition 1e4 per factor, float32",
        "quad64": f"(c) the same quadratic in float64 (state dtype float64 for every method)",
    }
    lines = [f"Measured on {machine()}. One run of `python benchmarks/quality.py`, {total / 60:.1f} minutes; "
             f"{SEEDS} seeds at the best learning rate (seed 0 is the sweep's run), 3 learning rates per method "
             "chosen by seed 0's final train loss. Steps: " + ", ".join(f"{k} {v}" for k, v in STEPS.items())
             + f". Sketchy on (a) updates its FD sketch every {SKETCHY_STATS_EVERY} step(s) (`stats_every`).",
             "",
             "Common settings: betas (0.9, 0.999), no weight decay, cosine schedule (20 warm-up steps on (a), "
             "(b); none on (c)). Our matrix methods: Adam grafting, float32 momentum, `shampoo_eps` 1e-6, "
             "`precondition_frequency` 10, vectors (biases, LayerNorm) with our Adam. Peers: pytorch-optimizer "
             "`ScalableShampoo` (RMSProp graft, EMA momentum, block 512, preconditioner every 10 steps, "
             "matrix_eps 1e-6), pytorch-optimizer `Shampoo` (no graft, momentum 0.9, every 10 steps), heavyball "
             "`KLShampoo` (its defaults but precondition_frequency 10, no torch.compile). ± is half the range "
             "over seeds. Bytes: every tensor in `optimizer.state` after training; 'preconditioner' counts "
             "statistics, roots, sketches (ours: `blocks*`), `pre_cond*`/statistics/preconditioners "
             "(pytorch-optimizer) and Q/GG (heavyball).", ""]
    for t, res in all_res.items():
        lines += [f"## {desc[t]}", "", f"Wall time {secs.get(t, 0):.0f} s.", ""] + table(t, res) + [""]
    lines += ["## Goals", ""] + goals(all_res) + [""]
    lines += ["## Plots", ""] + [f"![{f}]({f})" for f in files] + [""]
    text = "# Optimizer quality and speed against peers\n\n" + "\n".join(lines)
    (OUT / "quality.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
