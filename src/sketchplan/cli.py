"""The ``sketchplan`` command: a thin skin over the Python API (parse flags, call, render).

Exit codes: 0 success, 1 a regression (``check``), 2 bad input (one sentence on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError


def _csv(kind):
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if kind is int:
            out = []
            for s in items:
                try:
                    out.append(int(s))
                except ValueError:
                    raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
            return out
        return items
    return parse


def _parser() -> argparse.ArgumentParser:
    from .planner.candidates import (DEFAULT_BLOCK_SIZES, DEFAULT_GRAFTS, DEFAULT_METHODS, DEFAULT_MOMENTA,
                                     DEFAULT_RANKS)

    p = argparse.ArgumentParser(prog="sketchplan", description="Plan optimizer memory: which optimizer fits this "
                                "model, at which rank or block size.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"sketchplan {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    pl = sub.add_parser("plan", help="choose per-tensor optimizers under a memory budget and write a plan")
    pl.add_argument("--model", help="preset name, package.module:factory, shapes .yaml/.json, "
                    "or hf:PATH/config.json (with --update: default the plan's own model)")
    pl.add_argument("--update", metavar="PLAN", help="re-plan an existing plan with its own budget, settings and "
                    "candidates, and write it back (the reviewed way to accept a change)")
    pl.add_argument("--memory-budget", help="device memory for params, grads, optimizer state and step workspace, "
                    "e.g. 24GiB, 80GB, 512MiB (default: no limit)")
    pl.add_argument("--reserve", default="0", help="memory kept free for activations (default 0)")
    pl.add_argument("--batch-size", type=int, help="trace one forward and backward at this batch size with fake "
                    "tensors; the budget then covers the whole training step")
    pl.add_argument("--seq-len", type=int, help="tokens per sequence of the traced batch (language models)")
    pl.add_argument("--inputs", metavar="MODULE:FUNCTION", help="the traced batch: FUNCTION(batch_size, seq_len) "
                    "returns a dict of keyword arguments, a tuple or a tensor (default for presets: token ids "
                    "or images with labels)")
    pl.add_argument("--headroom", type=float, help="fraction of the budget left to the allocator's fragmentation "
                    "(default 0.10 with --batch-size, else 0)")
    pl.add_argument("--time-budget-ms", type=float, help="amortised optimizer step time allowed, predicted with "
                    "--hardware (default: no limit)")
    pl.add_argument("--methods", type=_csv(str), default=list(DEFAULT_METHODS),
                    help=f"comma list (default {','.join(DEFAULT_METHODS)}; also extreme_tensoring, kradagrad)")
    pl.add_argument("--ranks", type=_csv(int), default=list(DEFAULT_RANKS), help="Sketchy ranks")
    pl.add_argument("--block-sizes", type=_csv(int), default=list(DEFAULT_BLOCK_SIZES), help="block sizes")
    pl.add_argument("--grafts", type=_csv(str), default=list(DEFAULT_GRAFTS), help="grafts offered")
    pl.add_argument("--momenta", type=_csv(str), default=list(DEFAULT_MOMENTA), help="momentum dtypes offered")
    pl.add_argument("--world-size", type=int, default=1, help="data-parallel ranks (default 1)")
    pl.add_argument("--shard-optimizer-state", action="store_true", help="ZeRO-1: split state across ranks")
    pl.add_argument("--param-dtype", help="dtype of parameters and gradients, e.g. bfloat16 (default: the model's)")
    pl.add_argument("--grad-dtype", help="gradient dtype if it differs from the parameters'")
    pl.add_argument("--master-weights", action="store_true", help="count a float32 master copy of trainable params")
    pl.add_argument("--state-dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    pl.add_argument("--merge-dims", type=int, default=1024)
    pl.add_argument("--max-precond-dim", type=int, default=8192)
    pl.add_argument("--precondition-frequency", type=int, default=10)
    pl.add_argument("--lr", type=float, default=1e-3)
    pl.add_argument("--weight-decay", type=float, default=0.0)
    pl.add_argument("--hardware", default="auto", help="hardware profile for predicted step times and kernel "
                    "variants: auto (the shipped profile matching this machine, else an analytic roofline), a "
                    "shipped profile NAME, or a FILE from `sketchplan profile` (default auto)")
    pl.add_argument("--out", help="write the plan YAML here")
    pl.add_argument("--spectrum", metavar="FILE", help="score probed tensors by their measured gradient spectra "
                    "(from `sketchplan probe`)")
    pl.add_argument("--explain", metavar="TENSOR", action="append", default=[],
                    help="explain why TENSOR got its choice (repeatable)")
    _view_flags(pl)

    ck = sub.add_parser("check", help="CI memory-regression check of a committed plan against today's model")
    ck.add_argument("plan")
    ck.add_argument("--model", help="the model today (default: the plan's model source)")
    ck.add_argument("--tolerance", type=float, default=0.0, metavar="PCT",
                    help="allowed growth of optimizer state, in percent (default 0)")
    ck.add_argument("--budget", help="memory budget to enforce (default: the plan's budget minus its reserve)")
    ck.add_argument("--measure", action="store_true", help="instantiate the optimizer, step it, and compare the "
                    "state it allocates with the prediction")
    ck.add_argument("--device", default="cpu", help="device for --measure: cpu or cuda[:i]")
    ck.add_argument("--json", metavar="FILE", help="write the report as JSON (schema: docs/check-report.schema.json)")
    ck.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (one test case per check)")

    pr = sub.add_parser("probe", help="train a few steps and measure each matrix parameter's gradient spectra")
    pr.add_argument("--model", required=True, help="package.module:factory returning the (real) nn.Module")
    pr.add_argument("--data", required=True, help="package.module:batches, a callable returning an iterable of "
                    "batches (cycled)")
    pr.add_argument("--loss", help="package.module:fn with fn(model, batch) -> loss (default: loss_fn in the data "
                    "module, else cross-entropy of model(x) against y for (x, y) batches)")
    pr.add_argument("--steps", type=int, default=100)
    pr.add_argument("--rank", type=int, default=256, help="FD sketch rank per axis (default 256)")
    pr.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the probing run")
    pr.add_argument("--out", required=True, help="spectrum file to write (YAML)")

    pf = sub.add_parser("profile", help="measure the optimizers' kernels on a device and write a hardware profile")
    pf.add_argument("--device", default="cpu", help="cpu, cuda, cuda:INDEX or tpu (default cpu)")
    pf.add_argument("--framework", default="torch", choices=["torch", "jax"])
    pf.add_argument("--quick", action="store_true", help="small size grid (under 2 minutes on a CPU)")
    pf.add_argument("--threads", type=int, help="CPU threads torch uses while measuring (recorded in the "
                    "fingerprint; default: torch's default)")
    pf.add_argument("--out", help="profile YAML to write (default: NAME.yaml after the device fingerprint)")

    sh = sub.add_parser("show", help="render an existing plan")
    sh.add_argument("plan")
    sh.add_argument("--plot", metavar="FILE.png", help="draw per-layer memory by method and the memory-vs-score "
                    "frontier (needs matplotlib)")
    _view_flags(sh)
    return p


def _view_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--by-module", action="store_true", help="one row per module")
    g.add_argument("--per-tensor", action="store_true", help="one row per tensor (default folds layers)")
    p.add_argument("--all", action="store_true", help="show every row")


def _mode(args) -> str:
    return "module" if args.by_module else "tensor" if args.per_tensor else "class"


def _cmd_update(args, console) -> int:
    from .files import write_atomic
    from .planner import make_plan
    from .planner.plan import Plan
    from .planner.sizes import fmt_bytes
    from .planner.sources import load_spec
    from .report import render_plan

    old = Plan.load(args.update)
    out = args.out or args.update
    write_atomic_check(out)
    source = args.model or old.model.source
    if not source:
        raise UserError(f"plan {args.update!r} does not record its model; pass --model.")
    spec = load_spec(source)
    g, s, b = old.grid, old.settings, old.budget
    grid = dict(methods=g.methods, ranks=g.ranks, block_sizes=g.block_sizes, grafts=g.grafts,
                momenta=g.momenta) if g else {}
    new = make_plan(spec, b.memory_bytes, source=source, defaults=old.defaults, reserve=b.reserve_bytes,
                    activations=old.activations, headroom=b.headroom,
                    world_size=s.world_size, shard_optimizer_state=s.shard_optimizer_state,
                    param_dtype=s.param_dtype, grad_dtype=s.grad_dtype, master_weights=s.master_weights,
                    hardware=args.hardware, **grid)
    render_plan(new, console, _mode(args), None if args.all else 60)
    write_atomic(out, new.to_yaml())
    delta = new.totals.state_bytes - old.totals.state_bytes
    console.print(f"plan updated: optimizer state {fmt_bytes(old.totals.state_bytes)} → "
                  f"{fmt_bytes(new.totals.state_bytes)} ({'+' if delta >= 0 else '-'}{fmt_bytes(abs(delta))}), "
                  f"peak {fmt_bytes(old.totals.peak_bytes)} → {fmt_bytes(new.totals.peak_bytes)}; written to "
                  f"[bold]{out}[/]")
    return 0


def _cmd_check(args, console) -> int:
    from .planner.check import junit_xml
    from .verify import check
    from .files import write_atomic
    from .planner.plan import Plan
    from .planner.sizes import parse_size
    from .planner.sources import load_model
    from .report import render_check

    for path in (args.json, args.junit):
        if path:
            write_atomic_check(path)
    if args.tolerance < 0:
        raise UserError(f"--tolerance {args.tolerance:g} is negative; give a percentage ≥ 0.")
    plan = Plan.load(args.plan)
    source = args.model or plan.model.source
    if not source:
        raise UserError(f"plan {args.plan!r} does not record its model; pass --model.")
    budget = parse_size(args.budget, "budget") if args.budget else None
    report = check(plan, load_model(source, module=args.measure), plan_path=args.plan, tolerance_pct=args.tolerance, budget=budget,
                   measure=args.measure, device=args.device)
    render_check(report, console)
    if args.json:
        write_atomic(args.json, report.model_dump_json(indent=2) + "\n")
    if args.junit:
        write_atomic(args.junit, junit_xml(report) + "\n")
    return report.exit_code


def _cmd_plan(args, console) -> int:
    from .methods.layout import OptimizerDefaults
    from .files import write_atomic
    from .planner import make_plan
    from .planner.plan import Plan
    from .planner.sources import load_spec
    from .report import render_plan

    if args.update:
        return _cmd_update(args, console)
    if not args.model:
        raise UserError("sketchplan plan needs --model (or --update PLAN to refresh an existing plan).")
    if args.out:  # fail before the work when the output cannot be written
        write_atomic_check(args.out)
    try:
        defaults = OptimizerDefaults(state_dtype=args.state_dtype, merge_dims=args.merge_dims,
                                     max_precond_dim=args.max_precond_dim,
                                     precondition_frequency=args.precondition_frequency, lr=args.lr,
                                     weight_decay=args.weight_decay)
    except ValueError as exc:
        raise UserError(f"invalid optimizer option: {str(exc).splitlines()[-1].strip()}.") from None
    for flag, dt in (("--param-dtype", args.param_dtype), ("--grad-dtype", args.grad_dtype)):
        from .methods.layout import DTYPE_BYTES

        if dt is not None and dt not in DTYPE_BYTES:
            raise UserError(f"{flag} {dt!r} is not a dtype; use e.g. float32, bfloat16 or float16.")
    spec = load_spec(args.model)
    activations = None
    if args.batch_size is not None:
        from .planner.activations import trace_source

        activations = trace_source(args.model, args.batch_size, args.seq_len, args.inputs)
    elif args.seq_len is not None or args.inputs is not None:
        raise UserError("--seq-len and --inputs describe the traced batch; give --batch-size too.")
    plan: Plan = make_plan(spec, args.memory_budget, activations=activations, headroom=args.headroom, source=args.model, methods=args.methods, ranks=args.ranks,
                           block_sizes=args.block_sizes, grafts=args.grafts, momenta=args.momenta,
                           defaults=defaults, reserve=args.reserve, world_size=args.world_size,
                           shard_optimizer_state=args.shard_optimizer_state, param_dtype=args.param_dtype,
                           grad_dtype=args.grad_dtype, master_weights=args.master_weights, spectrum=args.spectrum,
                           hardware=args.hardware, time_budget_ms=args.time_budget_ms)
    render_plan(plan, console, _mode(args), None if args.all else 60)
    if args.explain:
        from .planner.explain import explain
        from .report import render_explain

        for name in args.explain:
            render_explain(explain(plan, spec, name), console)
    if args.out:
        write_atomic(args.out, plan.to_yaml())
        console.print(f"plan written to [bold]{args.out}[/]")
    return 0


def write_atomic_check(path: str) -> None:
    from pathlib import Path

    parent = Path(path).parent
    if str(parent) and not parent.is_dir():
        raise UserError(f"cannot write {path!r}: directory {str(parent)!r} does not exist; create it or choose "
                        "another --out path.")


def _cmd_probe(args, console) -> int:
    import importlib

    from .planner.probe import probe
    from .planner.sources import build_factory, import_callable

    write_atomic_check(args.out)
    if args.steps <= 0 or args.rank <= 0:
        raise UserError("--steps and --rank must be positive integers.")
    model = build_factory(args.model, meta=False)
    data = import_callable(args.data, "--data")
    if args.loss:
        loss = import_callable(args.loss, "--loss")
    else:
        mod = importlib.import_module(args.data.partition(":")[0])
        loss = getattr(mod, "loss_fn", None) or _cross_entropy
    batches = data()
    spec = probe(model, loss, batches, steps=args.steps, rank=args.rank, lr=args.lr, source=args.model, progress=True)
    spec.save(args.out)
    console.print(f"probed {len(spec.tensors)} matrix tensors over {args.steps} steps (rank {args.rank}); "
                  f"spectra written to [bold]{args.out}[/]")
    return 0


def _cross_entropy(model, batch):
    import torch

    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def _cmd_profile(args, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .profiles.measure import describe, measure_profile

    if args.out:
        write_atomic_check(args.out)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} must be at least 1.")
        import torch

        torch.set_num_threads(args.threads)
    with Progress(TextColumn("[progress.description]{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None)

        def progress(what: str, total: int) -> None:
            bar.update(task, description=what, total=total, advance=0 if bar.tasks[0].total is None else 1)

        profile = measure_profile(args.device, args.framework, quick=args.quick, progress=progress)
        bar.update(task, description="done", completed=bar.tasks[0].total)
    out = args.out or f"{profile.name}.yaml"
    profile.save(out)
    console.print(describe(profile))
    console.print(f"profile written to [bold]{out}[/]; use it with `sketchplan plan --hardware {out}`")
    return 0


def _cmd_show(args, console) -> int:
    from .planner.plan import Plan
    from .report import render_plan

    plan = Plan.load(args.plan)
    render_plan(plan, console, _mode(args), None if args.all else 60)
    if args.plot:
        from .planner.sources import load_spec
        from .plot import plot_plan

        try:
            spec = load_spec(plan.model.source) if plan.model.source else None
        except UserError:
            spec = None  # the frontier needs the model; the per-layer chart does not
        plot_plan(plan, args.plot, spec)
        console.print(f"plot written to [bold]{args.plot}[/]"
                      + ("" if spec else " (without the frontier: the plan's model could not be loaded)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.text import Text

    args = _parser().parse_args(argv)
    import os

    # A pipe or CI log gets a readable width instead of rich's 80-column fallback.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 150
    console = Console(width=width)
    err = Console(stderr=True)
    try:
        if args.cmd == "plan":
            return _cmd_plan(args, console)
        if args.cmd == "show":
            return _cmd_show(args, console)
        if args.cmd == "check":
            return _cmd_check(args, console)
        if args.cmd == "probe":
            return _cmd_probe(args, console)
        if args.cmd == "profile":
            return _cmd_profile(args, console)
    except UserError as exc:
        err.print(Text("error: ", style="bold red") + Text(str(exc)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
