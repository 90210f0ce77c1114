"""The ``sketchplan`` command: a thin skin over the Python API (parse flags, call, render).

Exit codes: 0 success, 1 a regression (``check``), 2 bad input (one sentence on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError


#: items in one comma list (--methods, --ranks, ...): more would multiply the candidates past any use
MAX_LIST = 64


def _csv(kind, what: str = ""):
    def parse(text: str):
        from .errors import UserError as _E
        from .validate import MAX_INT, number

        items = [s.strip() for s in text.split(",") if s.strip()]
        if len(items) > MAX_LIST:
            raise argparse.ArgumentTypeError(f"{len(items)} items are too many; give at most {MAX_LIST}")
        if kind is int:
            out = []
            for s in items:
                try:
                    value = int(s) if s.lstrip("+-").isdigit() and len(s) < 100 else s
                    out.append(number(value, what, lo=1, hi=MAX_INT, integer=True))
                except _E as exc:
                    raise argparse.ArgumentTypeError(str(exc).strip()) from None
            return list(dict.fromkeys(out))
        return list(dict.fromkeys(items))
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one sentence (a ``UserError``: exit 2, no usage dump, no SystemExit
    from ``main``)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message.rstrip('.')}; see `{self.prog} --help`.")


def flag_size(what: str = ""):
    """An argparse ``type=`` for a byte size (``24GiB``, ``80GB``, a byte count): finite, 0 to 2^63 bytes."""
    def parse(text: str) -> int:
        from .planner.sizes import parse_size

        try:
            return parse_size(text, what)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None
    parse.__name__ = "size"
    return parse


def _step_ratio(text: str) -> float:
    """``--max-step-vs-adam``: a positive number, or ``inf`` for no default time bound."""
    if text.strip().lower() == "inf":
        return float("inf")
    from .validate import flag_float

    return flag_float(0, lo_open=True, example="3")(text)


def _parser() -> argparse.ArgumentParser:
    from .planner.candidates import (DEFAULT_BLOCK_SIZES, DEFAULT_GRAFTS, DEFAULT_METHODS, DEFAULT_MOMENTA,
                                     DEFAULT_RANKS)
    from .planner.candidates import DEFAULT_COMPRESS  # issue 19 part A
    from .planner.time_bound import DEFAULT_MAX_STEP_VS_ADAM

    from .validate import MAX_WORLD_SIZE, flag_float, flag_int

    p = _Parser(prog="sketchplan", description="Plan optimizer memory: which optimizer fits this "
                "model, at which rank or block size.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"sketchplan {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    pl = sub.add_parser("plan", help="choose per-tensor optimizers under a memory budget and write a plan")
    from .planner.sources import PRESETS

    pl.add_argument("--model", help=f"a preset ({', '.join(PRESETS)}), package.module:factory, a shapes "
                    ".yaml/.json, or hf:DIR / hf:PATH/config.json (with --update: default the plan's own model)")
    pl.add_argument("--update", metavar="PLAN", help="re-plan an existing plan with its own budget, settings and "
                    "candidates, and write it back (the reviewed way to accept a change; default: plan anew from --model)")
    pl.add_argument("--memory-budget", type=flag_size("memory budget"), help="device memory for params, grads, "
                    "optimizer state and step workspace, e.g. 24GiB, 80GB, 512MiB (default: no limit)")
    pl.add_argument("--reserve", default=0, type=flag_size("reserve"),
                    help="memory kept free for activations (default 0)")
    pl.add_argument("--time-budget-ms", type=flag_float(0, lo_open=True, example="500"), help="amortised optimizer "
                    "step time allowed, predicted with --hardware (default: --max-step-vs-adam times all-Adam's "
                    "step)")
    pl.add_argument("--max-step-vs-adam", type=_step_ratio, default=DEFAULT_MAX_STEP_VS_ADAM, metavar="X",
                    help="default time bound: the optimizer step at most X times all-Adam's predicted step "
                    f"(default {DEFAULT_MAX_STEP_VS_ADAM:g}; inf: no bound; see docs/hardware-profiles.md)")
    pl.add_argument("--tokens-per-step", type=flag_int(1, example="8192"), metavar="N", help="tokens (samples × "
                    "positions) per training step: the forward+backward estimate uses it, and the default time bound "
                    "is then at least 25%% of that forward+backward (default: shown at 8,192, bound by "
                    "--max-step-vs-adam alone)")
    pl.add_argument("--batch-size", type=flag_int(1, example="8"), help="trace one forward and backward at this "
                    "batch size with fake tensors; the budget then covers the whole training step (default: no trace; "
                    "--reserve stands for the activations)")
    pl.add_argument("--seq-len", type=flag_int(1, example="2048"), help="tokens per sequence of the traced batch "
                    "(language models need it with --batch-size; default: none)")
    pl.add_argument("--inputs", metavar="MODULE:FUNCTION", help="the traced batch: FUNCTION(batch_size, seq_len) "
                    "returns a dict of keyword arguments, a tuple or a tensor (default for presets: token ids "
                    "or images with labels)")
    pl.add_argument("--headroom", type=flag_float(0, 1, hi_open=True, example="0.1"), help="fraction of the budget "
                    "left to the allocator's fragmentation (default 0.10 with --batch-size, else 0)")
    pl.add_argument("--methods", type=_csv(str), default=list(DEFAULT_METHODS),
                    help=f"comma list (default {','.join(DEFAULT_METHODS)}; also extreme_tensoring, kradagrad, soap, "
                    "adafactor, lion, muon)")
    pl.add_argument("--ranks", type=_csv(int, "rank"), default=list(DEFAULT_RANKS), help="Sketchy ranks offered, "
                    f"comma list (default {','.join(map(str, DEFAULT_RANKS))})")
    pl.add_argument("--block-sizes", type=_csv(int, "block size"), default=list(DEFAULT_BLOCK_SIZES),
                    help=f"block sizes offered, comma list (default {','.join(map(str, DEFAULT_BLOCK_SIZES))})")
    pl.add_argument("--grafts", type=_csv(str), default=list(DEFAULT_GRAFTS), help="grafts offered, comma list "
                    f"(default {','.join(DEFAULT_GRAFTS)})")
    pl.add_argument("--momenta", type=_csv(str), default=list(DEFAULT_MOMENTA), help="momentum dtypes offered, "
                    f"comma list: none, float32, bfloat16; int8: 8-bit blockwise (default {','.join(DEFAULT_MOMENTA)})")
    pl.add_argument("--compress", type=_csv(str), default=list(DEFAULT_COMPRESS), help="storage of the second "
                    "moments offered (Adam's, adam/rmsprop grafts): none, bfloat16, int8 (8-bit blockwise); "
                    "default none")
    pl.add_argument("--world-size", type=flag_int(1, MAX_WORLD_SIZE), default=1,
                    help="data-parallel ranks (default 1)")
    pl.add_argument("--parallelism", choices=["ddp", "zero1", "zero2", "fsdp", "hsdp"],
                    help="how the ranks share the model: ddp, zero1, zero2, fsdp (FSDP2 fully_shard) or hsdp "
                    "(default ddp when --world-size > 1); the budget is per rank")
    pl.add_argument("--shard-group", type=flag_int(1, MAX_WORLD_SIZE),
                    help="hsdp: ranks a parameter is sharded over (divides --world-size; required with hsdp, no default)")
    pl.add_argument("--shard-optimizer-state", action="store_true", help="alias of --parallelism zero1")
    pl.add_argument("--mesh", metavar="AXIS=N,...", help="plan for a JAX device mesh, e.g. data=4,model=2: the "
                    "budget is per device and state is placed as the optax transformation places it; parameters "
                    "are split by their partition specs (a factory's sharded leaves, a shapes file's spec:), "
                    "replicated without one (default: no mesh)")
    pl.add_argument("--param-dtype", help="dtype of parameters and gradients, e.g. bfloat16 (default: the model's)")
    pl.add_argument("--grad-dtype", help="gradient dtype if it differs from the parameters' (default: the parameters')")
    pl.add_argument("--master-weights", action="store_true", help="count a float32 master copy of trainable params")
    pl.add_argument("--state-dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                    help="dtype of the preconditioner statistics and roots (default float32)")
    pl.add_argument("--merge-dims", type=flag_int(1, example="1024"), default=1024, help="merge adjacent tensor "
                    "dimensions while their product stays at most this (docs/algorithms.md; default 1024)")
    pl.add_argument("--max-precond-dim", type=flag_int(1, example="8192"), default=8192, help="a tensor whose "
                    "blocks keep a dimension above this is not preconditioned: it takes its graft (default 8192)")
    pl.add_argument("--precondition-frequency", type=flag_int(1, example="10"), default=10, help="steps between "
                    "root / eigenbasis refreshes; the predicted step time amortises them (default 10)")
    pl.add_argument("--nonfinite-guard", choices=["auto", "true", "false"],
                    help="the per-step read of every gradient that skips one holding NaN or Inf: auto (only when "
                    "the plan holds a matrix method), true, or false (the training loop checks, e.g. GradScaler); "
                    "recorded in the plan, and the predicted step times count it (default auto; with --update, "
                    "the plan's own unless given)")
    pl.add_argument("--lr", type=flag_float(0, lo_open=True, example="1e-3"), default=1e-3,
                    help="learning rate recorded in the plan for build_optimizer (default 1e-3)")
    pl.add_argument("--weight-decay", type=flag_float(0, example="0.01"), default=0.0,
                    help="decoupled weight decay recorded in the plan (default 0)")
    pl.add_argument("--hardware", default="auto", help="hardware profile for predicted step times and kernel "
                    "variants: auto (the shipped profile matching this machine, else an analytic roofline), a "
                    "shipped profile NAME, or a FILE from `sketchplan profile` (default auto)")
    pl.add_argument("--out", help="write the plan YAML here (default: print only)")
    pl.add_argument("--spectrum", metavar="FILE", help="score probed tensors by their measured gradient spectra "
                    "(from `sketchplan probe`; default: the documented prior, docs/score-model.md)")
    pl.add_argument("--explain", metavar="TENSOR", action="append", default=[],
                    help="explain why TENSOR got its choice (repeatable; default: none)")
    _view_flags(pl)

    ck = sub.add_parser("check", help="CI memory-regression check of a committed plan against today's model")
    ck.add_argument("plan", help="the committed plan YAML")
    ck.add_argument("--model", help="the model today, as plan --model takes it (default: the plan's model source)")
    ck.add_argument("--tolerance", type=flag_float(0, example="2"), default=0.0, metavar="PCT",
                    help="allowed growth of optimizer state, in percent (default 0)")
    ck.add_argument("--budget", type=flag_size("budget"),
                    help="memory budget to enforce (default: the plan's budget minus its reserve)")
    ck.add_argument("--measure", action="store_true", help="instantiate the optimizer, step it, and compare the "
                    "state it allocates with the prediction")
    ck.add_argument("--device", default="cpu", help="device for --measure: cpu or cuda[:i] (default cpu)")
    ck.add_argument("--json", metavar="FILE", help="write the report as JSON (schema: docs/check-report.schema.json; "
                    "default: none)")
    ck.add_argument("--junit", metavar="FILE", help="write a JUnit XML report, one test case per check (default: "
                    "none)")

    pr = sub.add_parser("probe", help="train a few steps and measure each matrix parameter's gradient spectra")
    pr.add_argument("--model", required=True, help="package.module:factory returning the (real) nn.Module")
    pr.add_argument("--data", required=True, help="package.module:batches, a callable returning an iterable of "
                    "batches (cycled)")
    pr.add_argument("--loss", help="package.module:fn with fn(model, batch) -> loss (default: loss_fn in the data "
                    "module, else cross-entropy of model(x) against y for (x, y) batches)")
    pr.add_argument("--steps", type=flag_int(1, 10**7, example="100"), default=100,
                    help="AdamW steps to train while sketching (default 100)")
    pr.add_argument("--rank", type=flag_int(1, 2**16, example="256"), default=256,
                    help="FD sketch rank per axis (default 256)")
    pr.add_argument("--lr", type=flag_float(0, example="1e-3"), default=1e-3,
                    help="AdamW learning rate of the probing run (default 1e-3)")
    pr.add_argument("--out", required=True, help="spectrum file to write (YAML)")

    pf = sub.add_parser("profile", help="measure the optimizers' kernels on a device and write a hardware profile")
    pf.add_argument("--device", default="cpu", help="cpu, cuda, cuda:INDEX or tpu (default cpu)")
    pf.add_argument("--framework", default="torch", choices=["torch", "jax"],
                    help="whose kernels to time (default torch)")
    pf.add_argument("--quick", action="store_true", help="small size grid (under 2 minutes on a CPU)")
    pf.add_argument("--threads", type=flag_int(1, 4096), help="CPU threads torch uses while measuring (recorded "
                    "in the fingerprint; default: torch's default)")
    pf.add_argument("--out", help="profile YAML to write (default: NAME.yaml after the device fingerprint)")

    sh = sub.add_parser("show", help="render an existing plan")
    sh.add_argument("plan", help="the plan YAML to render")
    sh.add_argument("--plot", metavar="FILE.png", help="draw per-layer memory by method and the memory-vs-score "
                    "frontier (needs matplotlib; default: no plot)")
    _view_flags(sh)
    return p


def _view_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--by-module", action="store_true", help="one row per module (default: one per tensor class, "
                   "repeated layers folded)")
    g.add_argument("--per-tensor", action="store_true", help="one row per tensor (default folds layers)")
    p.add_argument("--all", action="store_true", help="show every row (default: the first 60)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="the table's rows (method, configuration "
                   "and graft apart), totals, what-ifs and the plan as JSON, on stdout or to FILE; with stdout the "
                   "tables are not printed (default: tables only)")


def _mode(args) -> str:
    return "module" if args.by_module else "tensor" if args.per_tensor else "class"


def _json_out(args) -> list[tuple[str, str | None]]:
    """``--json FILE`` is an output like ``--out`` (``--json`` alone prints to stdout)."""
    return [("--json", args.json)] if getattr(args, "json", None) not in (None, "-") else []


def _render(plan, args, console):
    """Tables on ``console``, or with ``--json`` (stdout) the JSON alone; returns the console for the lines
    that follow (stderr when stdout carries JSON, so a script can parse stdout)."""
    from .report import plan_json, render_plan

    if args.json is None or args.json != "-":
        render_plan(plan, console, _mode(args), None if args.all else 60)
    if args.json is not None:
        import json

        text = json.dumps(plan_json(plan, _mode(args)), indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            from rich.console import Console

            return Console(stderr=True, width=console.width)
        from .files import write_atomic

        write_atomic(args.json, text, "--json")
        console.print(f"JSON written to [bold]{args.json}[/]", soft_wrap=True)
    return console


def _how_to_use(path: str, mesh: bool = False) -> str:
    """The one line after a plan is written: what to do with it."""
    build = "build_optax(Plan.load({!r}), params)" if mesh else "build_optimizer(Plan.load({!r}), model)"
    return (f"build it with [bold]sketchplan.{build.format(path)}[/], check it in CI with "
            f"[bold]sketchplan check {path}[/]")


def _guard_flag(value: str | None):
    """``--nonfinite-guard``'s value as ``OptimizerDefaults.nonfinite_guard`` (``auto`` when not given)."""
    return {"true": True, "false": False}.get(value, "auto")


def _cmd_update(args, console) -> int:
    from .files import write_atomic
    from .planner import make_plan
    from .planner.plan import Plan
    from .planner.sizes import fmt_bytes
    from .planner.sources import load_spec
    from .planner.parallel import settings_kwargs

    out = args.update if args.out is None else args.out
    # writing the plan back over itself is what --update is for; every other input is protected
    _outputs([("--update" if args.out is None else "--out", out)] + _json_out(args),
             _model_inputs(args.model) + _plan_inputs(args))
    old = Plan.load(args.update)
    source = args.model or old.model.source
    if not source:
        raise UserError(f"plan {args.update!r} does not record its model; pass --model.")
    if not args.model:
        _outputs([("--update" if args.out is None else "--out", out)], _model_inputs(source))
    with _recorded_model(args.model, args.update):
        spec = load_spec(source)
    g, s, b = old.grid, old.settings, old.budget
    specs = None
    if s.mesh is not None:  # specs the model does not carry itself keep the plan's
        recorded = {e.name: e.spec for e in old.tensors if e.spec is not None}
        specs = {p.name: recorded[p.name] for p in spec.params if p.spec is None and p.name in recorded} or None
    grid = dict(methods=g.methods, ranks=g.ranks, block_sizes=g.block_sizes, grafts=g.grafts,
                momenta=g.momenta, compress=g.compress) if g else {}
    defaults = old.defaults
    if args.nonfinite_guard is not None:  # the one optimizer option --update takes (e.g. true → auto)
        defaults = defaults.model_copy(update={"nonfinite_guard": _guard_flag(args.nonfinite_guard)})
    new = make_plan(spec, b.memory_bytes, source=source, defaults=defaults, reserve=b.reserve_bytes,
                    **settings_kwargs(s), partition_specs=specs,
                    activations=old.activations, headroom=b.headroom,
                    param_dtype=s.param_dtype, grad_dtype=s.grad_dtype, master_weights=s.master_weights,
                    hardware=args.hardware, max_step_vs_adam=args.max_step_vs_adam, **grid,
                    time_budget_ms=b.time_budget_ms if b.time_budget_source == "--time-budget-ms" else None)
    console = _render(new, args, console)
    text = new.to_yaml()
    try:
        with open(out, encoding="utf-8") as f:
            unchanged = f.read() == text
    except (OSError, UnicodeDecodeError):
        unchanged = False
    if unchanged:  # a no-op update must not touch the file (no mtime change, no diff to review)
        console.print(f"plan unchanged: [bold]{out}[/] already holds this plan; nothing written")
        return 0
    write_atomic(out, text, "--update" if args.out is None else "--out")
    delta = new.totals.state_bytes - old.totals.state_bytes
    console.print(f"plan updated: optimizer state {fmt_bytes(old.totals.state_bytes)} → "
                  f"{fmt_bytes(new.totals.state_bytes)} ({'+' if delta >= 0 else '-'}{fmt_bytes(abs(delta))}), "
                  f"peak {fmt_bytes(old.totals.peak_bytes)} → {fmt_bytes(new.totals.peak_bytes)}; written to "
                  f"[bold]{out}[/]; review the diff and commit it")
    return 0


def _cmd_check(args, console) -> int:
    from .planner.check import junit_xml
    from .verify import check
    from .files import write_atomic
    from .planner.plan import Plan
    from .planner.sizes import parse_size
    from .planner.sources import load_model
    from .report import render_check

    outputs = [("--json", args.json), ("--junit", args.junit)]
    _outputs(outputs, [("plan", args.plan)] + _model_inputs(args.model))
    if args.measure:
        _measure_device(args.device)
    plan = Plan.load(args.plan)
    source = args.model or plan.model.source
    if not source:
        raise UserError(f"plan {args.plan!r} does not record its model; pass --model.")
    if not args.model:
        _outputs(outputs, _model_inputs(source))
    budget = args.budget
    with _recorded_model(args.model, args.plan):
        model = load_model(source, module=args.measure)
    report = check(plan, model, plan_path=args.plan, tolerance_pct=args.tolerance, budget=budget,
                   measure=args.measure, device=args.device, source=source)
    render_check(report, console)
    if args.json is not None:
        write_atomic(args.json, report.model_dump_json(indent=2) + "\n", "--json")
    if args.junit is not None:
        write_atomic(args.junit, junit_xml(report) + "\n", "--junit")
    return report.exit_code


def _cmd_plan(args, console) -> int:
    from .methods.layout import OptimizerDefaults
    from .files import write_atomic
    from .planner import make_plan
    from .planner.plan import Plan
    from .planner.sources import load_spec

    if args.update is not None:
        return _cmd_update(args, console)
    if not args.model:
        raise UserError("sketchplan plan needs --model (or --update PLAN to refresh an existing plan).")
    # fail before the work when an output cannot be written or would overwrite an input
    _outputs([("--out", args.out)] + _json_out(args), _model_inputs(args.model) + _plan_inputs(args))
    try:
        defaults = OptimizerDefaults(state_dtype=args.state_dtype, merge_dims=args.merge_dims,
                                     max_precond_dim=args.max_precond_dim,
                                     precondition_frequency=args.precondition_frequency, lr=args.lr,
                                     weight_decay=args.weight_decay,
                                     nonfinite_guard=_guard_flag(args.nonfinite_guard))
    except ValueError as exc:
        from .validate import pydantic_message

        raise UserError((pydantic_message(exc, "invalid optimizer option", _OPTION_FLAGS) if hasattr(exc, "errors")
                         else f"invalid optimizer option: {exc}") + "; see `sketchplan plan --help`.") from None
    for flag, dt in (("--param-dtype", args.param_dtype), ("--grad-dtype", args.grad_dtype)):
        if dt is not None and dt not in _FLOAT_DTYPES:
            raise UserError(f"{flag} {dt!r} is not a floating-point dtype; use one of {', '.join(_FLOAT_DTYPES)}.")
    spec = load_spec(args.model)
    mesh = None
    if args.mesh is not None:
        from .planner.mesh import parse_mesh

        mesh = parse_mesh(args.mesh)
    activations = None
    if args.batch_size is not None:
        from .planner.activations import trace_source

        activations = trace_source(args.model, args.batch_size, args.seq_len, args.inputs)
    elif args.seq_len is not None or args.inputs is not None:
        raise UserError("--seq-len and --inputs describe the traced batch; give --batch-size too.")
    plan: Plan = make_plan(spec, args.memory_budget, activations=activations, headroom=args.headroom, source=args.model, methods=args.methods, ranks=args.ranks,
                           block_sizes=args.block_sizes, grafts=args.grafts, momenta=args.momenta,
                           compress=args.compress, defaults=defaults, reserve=args.reserve, world_size=args.world_size,
                           shard_optimizer_state=args.shard_optimizer_state, param_dtype=args.param_dtype,
                           parallelism=args.parallelism, shard_group=args.shard_group,
                           grad_dtype=args.grad_dtype, master_weights=args.master_weights, spectrum=args.spectrum,
                           hardware=args.hardware, time_budget_ms=args.time_budget_ms,
                           max_step_vs_adam=args.max_step_vs_adam, tokens_per_step=args.tokens_per_step,
                           mesh=mesh)
    console = _render(plan, args, console)
    if args.explain:
        from .planner.explain import explain
        from .report import render_explain

        for name in args.explain:
            render_explain(explain(plan, spec, name), console)
    if args.out is not None:
        write_atomic(args.out, plan.to_yaml(), "--out")
        # soft wrap: the terminal folds the line, rich does not break the path or the commands inside words
        console.print(f"plan written to [bold]{args.out}[/]; " + _how_to_use(args.out, mesh is not None),
                      soft_wrap=True)
    elif args.json is None:
        build = "build_optax(Plan.load(...), params)" if mesh is not None else "build_optimizer(Plan.load(...), model)"
        console.print("nothing written: add [bold]--out plan.yaml[/] to keep this plan (then "
                      f"`sketchplan.{build}` builds it)")
    return 0


#: the flags that set each optimizer option (messages name the flag, not the field)
_OPTION_FLAGS = {"lr": "--lr", "weight_decay": "--weight-decay", "merge_dims": "--merge-dims",
                 "max_precond_dim": "--max-precond-dim", "precondition_frequency": "--precondition-frequency",
                 "state_dtype": "--state-dtype", "nonfinite_guard": "--nonfinite-guard"}
_FLOAT_DTYPES = ("float32", "float64", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2")


def _outputs(outputs: list[tuple[str, str | None]], inputs: list[tuple[str, str | None]] = ()) -> None:
    """Refuse, before any work, outputs that cannot be written or that name an input (``outputs.prepare``)."""
    from .outputs import prepare

    prepare(outputs, inputs)


def _model_inputs(source: str | None) -> list[tuple[str, str | None]]:
    from .planner.sources import source_files

    return source_files(source) if source else []


def _plan_inputs(args) -> list[tuple[str, str | None]]:
    out = [("--spectrum file", getattr(args, "spectrum", None))]
    hw = getattr(args, "hardware", None)
    if hw and hw != "auto":
        out.append(("--hardware profile", hw))
    return out


class _recorded_model:
    """When the model comes from the plan (no --model), a failure to load it says so, naming the plan."""

    def __init__(self, given: str | None, plan: str):
        self.given, self.plan = given, plan

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if self.given is None and isinstance(exc, UserError):
            raise UserError(f"{str(exc).rstrip('.')} (the model recorded in plan {self.plan!r}; pass --model to "
                            "give it).") from None
        return False


def _measure_device(device: str) -> None:
    """``check --measure`` allocates real tensors: only cpu and cuda[:INDEX] can hold them."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d{1,4})?", device.strip()):
        raise UserError(f"--device {device!r} cannot hold the measured optimizer state; use cpu or cuda[:INDEX].")


def _cmd_probe(args, console) -> int:
    import importlib

    from .planner.probe import probe
    from .planner.sources import build_factory, import_callable

    _outputs([("--out", args.out)], _model_inputs(args.model) + _model_inputs(args.data) + _model_inputs(args.loss))
    model = build_factory(args.model, meta=False)
    data = import_callable(args.data, "--data")
    if args.loss:
        loss = import_callable(args.loss, "--loss")
    else:
        mod = importlib.import_module(args.data.partition(":")[0])
        loss = getattr(mod, "loss_fn", None) or _cross_entropy
    try:
        batches = data()
    except Exception as exc:  # the user's data function
        raise UserError(f"--data {args.data!r} raised {type(exc).__name__}: {_first_line(exc)}; fix the data "
                        "function.") from None
    spec = probe(model, loss, batches, steps=args.steps, rank=args.rank, lr=args.lr, source=args.model, progress=True)
    spec.save(args.out, "--out")
    console.print(f"probed {len(spec.tensors)} matrix tensors over {args.steps} steps (rank {args.rank}); "
                  f"spectra written to [bold]{args.out}[/]", soft_wrap=True)
    return 0


def _cross_entropy(model, batch):
    import torch

    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def _cmd_profile(args, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .profiles.measure import describe, measure_profile, noise_warning

    from .profiles.fingerprint import detect, profile_name

    # the default name comes from the device, so every output is checked before minutes of measuring
    out = args.out if args.out is not None else f"{profile_name(detect(args.device, args.framework))}.yaml"
    _outputs([("--out", out)])
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    with Progress(TextColumn("[progress.description]{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None)

        def progress(what: str, total: int) -> None:
            bar.update(task, description=what, total=total, advance=0 if bar.tasks[0].total is None else 1)

        profile = measure_profile(args.device, args.framework, quick=args.quick, progress=progress)
        bar.update(task, description="done", completed=bar.tasks[0].total)
    profile.save(out, "--out")
    console.print(describe(profile))
    warning = noise_warning(profile)
    if warning:
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True).print(Text("warning: ", style="bold yellow") + Text(warning), soft_wrap=True)
    console.print(f"profile written to [bold]{out}[/]; use it with `sketchplan plan --hardware {out}`", soft_wrap=True)
    return 0


def _cmd_show(args, console) -> int:
    from .planner.plan import Plan

    _outputs(_json_out(args), [("plan", args.plan)])
    if args.plot is not None:
        from .plot import check_plot_path

        _outputs([("--plot", args.plot)] + _json_out(args), [("plan", args.plan)])
        check_plot_path(args.plot)
    plan = Plan.load(args.plan)
    if args.plot is not None and plan.model.source:
        _outputs([("--plot", args.plot)], _model_inputs(plan.model.source))
    console = _render(plan, args, console)
    if args.plot is not None:
        from .planner.sources import load_spec
        from .plot import plot_plan

        try:
            spec = load_spec(plan.model.source) if plan.model.source else None
        except UserError:
            spec = None  # the frontier needs the model; the per-layer chart does not
        plot_plan(plan, args.plot, spec)
        console.print(f"plot written to [bold]{args.plot}[/]"
                      + ("" if spec else " (without the frontier: the plan's model could not be loaded)"), soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    import gc

    was_on = gc.isenabled()
    gc.disable()  # see _main
    try:
        return _main(argv, was_on)
    finally:
        if was_on:
            gc.enable()


def _main(argv: list[str] | None, gc_was_on: bool) -> int:
    """``main``, with the cyclic garbage collector off while ``plan`` and ``show`` run: they are short-lived, make
    no reference cycles worth collecting, and keep ~10^5 objects alive (pydantic models, the planner's memos),
    which every automatic full collection would walk again (a fifth of a warm GPT-2 plan's CPU time). The
    long-running commands (probe, profile, check --measure) run with it as the caller had it."""
    import gc

    from rich.console import Console
    from rich.text import Text

    err = Console(stderr=True)
    try:
        args = _parser().parse_args(argv)
    except UserError as exc:  # a bad flag: one sentence, like every other bad input
        err.print(Text("error: ", style="bold red") + Text(str(exc)), soft_wrap=True)
        return 2
    if args.cmd not in ("plan", "show") and gc_was_on:
        gc.enable()
    import os

    # A pipe or CI log gets a readable width instead of rich's 80-column fallback.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 150
    console = Console(width=width)
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
    except MemoryError:  # the limits in validate/inputs should make this unreachable; never a traceback
        err.print(Text("error: ", style="bold red") + Text("ran out of memory: the model or an input file is too "
                                                            "large for this machine; check its sizes."), soft_wrap=True)
        return 2
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
