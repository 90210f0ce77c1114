"""Every model type transformers ships, built on the meta device from its default configuration, analysed and
planned by sketchplan (issue 17).

For each model type in ``CONFIG_MAPPING_NAMES``: the default configuration is built (``AutoConfig.for_model``),
its model class is taken from the first auto mapping that names the type (``AutoModel``'s first, then the task
mappings; for sub-configurations no mapping names, ``FooConfig`` → ``FooModel``), and the model is built under ``torch.device("meta")`` — nothing is allocated. A type whose
configuration or model does not build is transformers' business and is listed as such. Every model that builds
is then:

- analysed: the parameter count of the spec must equal ``sum(p.numel() for p in model.parameters())`` (tied
  tensors once) exactly;
- planned: ``make_plan(spec)`` without a budget, and again under a budget halfway between the smallest and the
  unconstrained plan (the solver works), and the plan must survive ``Plan.from_data(plan.to_yaml())``.

A failure in either is sketchplan's. Each type runs in a worker process with a time limit; a crash or a hang of
one type is recorded and the sweep goes on. Writes ``benchmarks/results/architecture_sweep.md`` (date, machine,
load average, every failure, a summary of what the models contain) and ``architecture_sweep.json``; an
interrupted run resumes from ``architecture_sweep.jsonl``.

    PYTHONPATH=src python benchmarks/architecture_sweep.py [--limit N] [--types a,b,c] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

WORKER = r"""
import json, os, sys, time, traceback, warnings
warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch, transformers
transformers.logging.set_verbosity_error()
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from sketchplan.errors import UserError
from sketchplan.planner import make_plan
from sketchplan.planner.analysis import analyze
from sketchplan.planner.plan import Plan
from sketchplan.inputs import load_yaml

MAPPINGS = ["MODEL_MAPPING_NAMES"] + sorted(n for n in dir(modeling_auto)
                                             if n.startswith("MODEL_FOR_") and n.endswith("_MAPPING_NAMES"))

def model_class(t):
    for name in MAPPINGS:
        cls = getattr(modeling_auto, name).get(t)
        if isinstance(cls, (list, tuple)):
            cls = cls[0]
        if cls and hasattr(transformers, cls):
            return getattr(transformers, cls)
    # sub-configurations (text or vision towers) that no auto mapping names: FooTextConfig -> FooTextModel
    guess = getattr(transformers, CONFIG_MAPPING_NAMES[t].replace("Config", "Model"), None)
    if isinstance(guess, type) and issubclass(guess, torch.nn.Module):
        return guess
    return None

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None

def where(exc):
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/sketchplan/" in f.filename]
    f = (ours or frames)[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}"

def one(t):
    r = {"type": t}
    t0 = time.perf_counter()
    try:
        cfg = transformers.AutoConfig.for_model(t)
        cls = model_class(t)
        if cls is None:
            r["stage"] = "no model class"
            return r
        r["class"] = cls.__name__
        count = [0]
        orig = torch.nn.Module.__init__
        def counting(self, *a, **k):
            count[0] += 1
            orig(self, *a, **k)
        torch.nn.Module.__init__ = counting
        try:
            with torch.device("meta"):
                model = cls(cfg)
        finally:
            torch.nn.Module.__init__ = orig
        r["modules"] = count[0]
    except Exception as exc:
        r["stage"] = "does not build"
        r["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
        return r
    r["build_s"] = round(time.perf_counter() - t0, 2)
    try:
        t1 = time.perf_counter()
        spec = analyze(model, source=t)
        seen, expected = set(), 0
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                expected += p.numel()
        r.update(n_params=spec.n_params, expected=expected, exact=spec.n_params == expected,
                 tensors=len(spec.params), trainable=len(spec.trainable),
                 zero_sized=sum(1 for p in spec.params if 0 in p.shape),
                 dtypes=sorted({p.dtype for p in spec.params} | {b.dtype for b in spec.buffers}))
        free = make_plan(spec, None, source=t)
        r["excluded"] = sum(1 for e in free.tensors if e.excluded)
        low = min(w.peak_bytes for w in free.what_if) if free.what_if else free.totals.peak_bytes
        budget = (low + free.totals.peak_bytes) // 2
        try:
            tight = make_plan(spec, budget, source=t)
            r["budget_plan"] = "ok"
        except UserError as exc:
            tight = free
            r["budget_plan"] = "infeasible: " + str(exc)[:80]
        for p in (free, tight):  # written and read back as a file would be
            assert Plan.from_data(load_yaml(p.to_yaml(), "plan", "-")) == p, "the plan does not load back"
        r["plan_s"] = round(time.perf_counter() - t1, 2)
        r["stage"] = "planned" if r["exact"] else "inexact parameter count"
    except UserError as exc:
        r["stage"] = "refused by sketchplan"
        r["error"] = str(exc)[:200]
    except Exception as exc:
        r["stage"] = "sketchplan crashed"
        r["error"] = f"{type(exc).__name__} at {where(exc)}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
    r["peak_rss_mb"] = rss_mb()
    return r

for t in sys.argv[1:]:
    print("START " + t, flush=True)
    print("RESULT " + json.dumps(one(t)), flush=True)
"""


def all_types() -> list[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return sorted(CONFIG_MAPPING_NAMES)


def run(types: list[str], timeout: float, batch: int, out_jsonl: Path) -> list[dict]:
    """Run the worker over ``types`` in batches (fresh processes bound memory); a type that hangs past
    ``timeout`` or kills its worker is recorded and the sweep continues with the next type."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done: dict[str, dict] = {}
    if out_jsonl.exists():  # resume
        for line in out_jsonl.read_text().splitlines():
            r = json.loads(line)
            done[r["type"]] = r
    todo = [t for t in types if t not in done]
    with out_jsonl.open("a") as log:
        while todo:
            chunk, todo = todo[:batch], todo[batch:]
            proc = subprocess.Popen([sys.executable, "-c", WORKER, *chunk], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True, env=env)
            current, last = None, time.monotonic()
            buf = ""
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], 5.0)
                if ready:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    last = time.monotonic()
                    if line.startswith("START "):
                        current = line[6:].strip()
                    elif line.startswith("RESULT "):
                        r = json.loads(line[7:])
                        done[r["type"]] = r
                        log.write(json.dumps(r) + "\n")
                        log.flush()
                        print(f"{len(done):4}/{len(types)} {r['type']:40} {r['stage']}", flush=True)
                        current = None
                elif time.monotonic() - last > timeout:
                    proc.kill()
                    break
                buf = ""
            proc.wait()
            if current is not None:  # hung or crashed on `current`: record it, rerun the rest of the chunk
                r = {"type": current, "stage": "timeout" if proc.returncode == -9 else
                     f"worker died (exit {proc.returncode})"}
                done[current] = r
                log.write(json.dumps(r) + "\n")
                log.flush()
                print(f"{len(done):4}/{len(types)} {current:40} {r['stage']}", flush=True)
            todo = [t for t in chunk if t not in done] + todo
    return [done[t] for t in types if t in done]


def write_table(results: list[dict], total_types: int, seconds: float, tf_version: str) -> str:
    from collections import Counter

    load = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    stages = Counter(r["stage"] for r in results)
    built = [r for r in results if r["stage"] not in ("does not build", "no model class")]
    ours = [r for r in built if r["stage"] in ("sketchplan crashed", "refused by sketchplan",
                                               "inexact parameter count", "timeout")
            or r["stage"].startswith("worker died")]
    dtypes = Counter(d for r in built for d in r.get("dtypes", []))
    lines = [
        "# Architecture sweep: every transformers model type, planned on the meta device",
        "",
        f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {platform.processor() or platform.machine()}"
        f" ({os.cpu_count()} cores, shared), Python {platform.python_version()}, transformers {tf_version}, "
        f"torch {_version('torch')}; {seconds / 60:.1f} min. Load average at the end: {load[0]:.2f}, "
        f"{load[1]:.2f}, {load[2]:.2f} (`{uptime}`).",
        "",
        "Command: `PYTHONPATH=src python benchmarks/architecture_sweep.py` (default configuration of each type, "
        "built under `torch.device(\"meta\")`, analysed, planned without a budget and under a budget halfway "
        "between the smallest and the unconstrained plan, each plan loaded back).",
        "",
        "| outcome | model types |",
        "|---|---|",
        f"| model types in `CONFIG_MAPPING_NAMES` | {total_types} |",
        f"| covered by this run | {len(results)} |",
    ]
    for stage in ("planned", "does not build", "no model class", "inexact parameter count", "refused by sketchplan",
                  "sketchplan crashed", "timeout"):
        lines.append(f"| {stage} | {stages.get(stage, 0)} |")
    for stage, n in stages.items():
        if stage.startswith("worker died"):
            lines.append(f"| {stage} | {n} |")
    lines += ["", f"**Failures caused by sketchplan: {len(ours)}**" + (" (none)." if not ours else "."), ""]
    if ours:
        lines += ["| type | class | outcome | error |", "|---|---|---|---|"]
        lines += [f"| {r['type']} | {r.get('class', '')} | {r['stage']} | {r.get('error', '').replace('|', '/')} |"
                  for r in ours]
        lines.append("")
    planned = [r for r in built if r["stage"] == "planned"]
    if planned:
        lines += [
            "What the planned models contain: "
            f"{sum(r['tensors'] for r in planned):,} parameter tensors, "
            f"{sum(r['zero_sized'] for r in planned)} zero-sized (in "
            f"{sum(1 for r in planned if r['zero_sized'])} types: "
            f"{', '.join(r['type'] for r in planned if r['zero_sized'])}), "
            f"{sum(r.get('excluded', 0) for r in planned)} excluded from optimisation (complex), "
            f"dtypes {', '.join(f'{d} ({n})' for d, n in sorted(dtypes.items()))} (types using each, parameters "
            "and buffers); the largest builds "
            f"{max(r.get('modules', 0) for r in planned):,} modules "
            f"({max(planned, key=lambda r: r.get('modules', 0))['type']}), the largest has "
            f"{max(r['n_params'] for r in planned):,} parameters "
            f"({max(planned, key=lambda r: r['n_params'])['type']}). Budgeted plans: "
            f"{sum(1 for r in planned if r.get('budget_plan') == 'ok')} solved, "
            f"{sum(1 for r in planned if str(r.get('budget_plan', '')).startswith('infeasible'))} infeasible "
            "(a one-sentence UserError: the halfway budget is below what parameters and gradients need).",
            "",
        ]
    no_build = [r for r in results if r["stage"] == "does not build"]
    if no_build:
        lines += ["<details><summary>Types whose default configuration or model does not build on meta "
                  f"(transformers' errors, {len(no_build)})</summary>", "",
                  "| type | error |", "|---|---|"]
        lines += [f"| {r['type']} | {r.get('error', '').replace('|', '/')} |" for r in no_build]
        lines += ["", "</details>", ""]
    no_class = [r["type"] for r in results if r["stage"] == "no model class"]
    if no_class:
        lines += [f"Types no auto mapping names a model class for ({len(no_class)}): {', '.join(no_class)}.", ""]
    text = "\n".join(lines)
    (RESULTS / "architecture_sweep.md").write_text(text)
    return text


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", help="comma list of model types (default: all)")
    ap.add_argument("--limit", type=int, help="only the first N types")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds without progress before a type is "
                    "declared hung")
    ap.add_argument("--batch", type=int, default=25, help="types per worker process")
    ap.add_argument("--fresh", action="store_true", help="ignore the results of an earlier (interrupted) run")
    args = ap.parse_args()
    import transformers

    types = args.types.split(",") if args.types else all_types()
    total = len(all_types())
    if args.limit:
        types = types[: args.limit]
    RESULTS.mkdir(exist_ok=True)
    jsonl = RESULTS / "architecture_sweep.jsonl"
    if args.fresh and jsonl.exists():
        jsonl.unlink()
    t0 = time.perf_counter()
    results = run(types, args.timeout, args.batch, jsonl)
    (RESULTS / "architecture_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    print(write_table(results, total, time.perf_counter() - t0, transformers.__version__))
    if len(results) == len(types):
        jsonl.unlink()  # complete: the resumable log is no longer needed (the .json holds every record)


if __name__ == "__main__":
    main()
