"""``check``: is a committed plan still true of today's model and today's sketchplan? (the CI memory check)

The model is re-analysed and every tensor is priced again with the plan's own settings (the entry's method
config and the plan's defaults, through the optimizers' layouts):

- structure: tensors added to the model, removed from it, reshaped, or frozen/unfrozen since the plan — the plan
  no longer describes the model (``build_optimizer`` would refuse it), so each is a failure; an added tensor is
  priced as Adam, what ``build_optimizer(..., allow_mismatch=True)`` would give it;
- state bytes: per tensor and in total, today's bytes against the plan's; growth above ``tolerance_pct`` fails
  (for an unchanged shape that means sketchplan's own accounting changed);
- budget: today's predicted peak against ``budget`` (default: the plan's budget minus its reserve);
- measure (optional, ``sketchplan.verify``): the planned optimizer is instantiated on a device, takes real steps, and the bytes of the
  state it actually allocated are compared with the plan, tensor by tensor — any difference fails; on CUDA
  the step's peak (torch's ``MemTracker`` on CPU, ``max_memory_allocated`` on CUDA) must not exceed the
  predicted peak.

Exit codes of the CLI: 0 all checks pass, 1 a regression, 2 bad input.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..methods import state_layout, total_bytes
from ..methods import state_layout as _layout
from ..methods.layout import MethodConfig
from .analysis import ModelSpec, analyze
from . import parallel
from .memory import Precision, step_peak
from .plan import Plan

REPORT_SCHEMA_VERSION = 1
Status = Literal["same", "grown", "shrunk", "reshaped", "added", "removed", "now-frozen", "now-trainable"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorDiff(_M):
    name: str
    status: Status
    old_shape: list[int] | None = None
    new_shape: list[int] | None = None
    old_bytes: int = 0
    new_bytes: int = 0
    delta: int = 0
    offending: bool = False


class CheckResult(_M):
    name: str = Field(description="structure | state-bytes | device-state-bytes | budget | measured-state-bytes | "
                      "measured-device-bytes | measured-peak")
    ok: bool
    message: str


class MeasuredTensor(_M):
    name: str
    predicted_bytes: int
    measured_bytes: int
    method: str


class Measurement(_M):
    device: str
    mode: Literal["materialised", "sampled"]
    note: str
    tensors: list[MeasuredTensor]
    predicted_state_bytes: int
    measured_state_bytes: int
    peak_allocated_bytes: int | None = None
    predicted_peak_bytes: int | None = None
    predicted_device_bytes: list[int] | None = Field(default=None, description="mesh plans: each device's "
                                                     "predicted optimizer state, the step count included")
    measured_device_bytes: list[int] | None = Field(default=None, description="mesh plans: what each device holds "
                                                    "(addressable_shards), in the mesh's device order")


class CheckReport(_M):
    """The machine-readable result of ``sketchplan check`` (``--json``); ``schema_version`` names this layout."""

    schema_version: Literal[1] = REPORT_SCHEMA_VERSION
    plan: str
    model: str
    ok: bool
    exit_code: int
    tolerance_pct: float
    budget_bytes: int | None
    old_state_bytes: int
    new_state_bytes: int
    new_peak_bytes: int
    checks: list[CheckResult]
    tensors: list[TensorDiff] = Field(description="every tensor whose status is not 'same', plus offending ones")
    measured: Measurement | None = None


def _grew(old: int, new: int, tol_pct: float) -> bool:
    return new > old * (1 + tol_pct / 100.0)


def diff_tensors(plan: Plan, spec: ModelSpec, tol_pct: float) -> tuple[list[TensorDiff], dict[str, MethodConfig]]:
    """Per-tensor comparison and the config every trainable tensor of today's model would get."""
    opts = plan.defaults
    planned = {e.name: e for e in plan.tensors}
    adam = MethodConfig(method="adam")
    par = parallel.from_settings(plan.settings)

    def state_layout(shape, cfg, opts):  # noqa: F811 - per-tensor bytes are the (largest) local shard's under FSDP
        return _layout(parallel.local_shape(shape, par.shards, 0) if par.sharded else shape, cfg, opts)

    diffs: list[TensorDiff] = []
    configs: dict[str, MethodConfig] = {}
    for p in spec.params:
        e = planned.pop(p.name, None)
        if e is None:
            cfg = adam if p.trainable else None
            new = total_bytes(state_layout(p.shape, cfg, opts)) if cfg else 0
            diffs.append(TensorDiff(name=p.name, status="added", new_shape=list(p.shape), new_bytes=new, delta=new,
                                    offending=True))
            if cfg:
                configs[p.name] = cfg
            continue
        cfg = e.config() if p.trainable else None
        if p.trainable and cfg is None and not e.excluded:  # frozen in the plan, trainable today: priced as Adam
            cfg = adam
        if cfg is not None and not _priceable(p.shape, cfg, opts):  # as the planner would give it
            cfg = adam
        new = total_bytes(state_layout(p.shape, cfg, opts)) if cfg else 0
        if cfg:
            configs[p.name] = cfg
        if tuple(e.shape) != p.shape:
            status = "reshaped"
        elif e.trainable and not p.trainable:
            status = "now-frozen"
        elif not e.trainable and p.trainable:
            status = "now-trainable"
        else:
            status = "same" if new == e.state_bytes else ("grown" if new > e.state_bytes else "shrunk")
        offending = status in ("reshaped", "now-frozen", "now-trainable") or _grew(e.state_bytes, new, tol_pct)
        diffs.append(TensorDiff(name=p.name, status=status, old_shape=list(e.shape), new_shape=list(p.shape),
                                old_bytes=e.state_bytes, new_bytes=new, delta=new - e.state_bytes,
                                offending=offending))
    for e in planned.values():
        diffs.append(TensorDiff(name=e.name, status="removed", old_shape=list(e.shape), old_bytes=e.state_bytes,
                                delta=-e.state_bytes, offending=True))
    return diffs, configs


def _priceable(shape: tuple[int, ...], cfg: MethodConfig, opts) -> bool:
    """Whether ``cfg`` can be priced on ``shape`` as planned: the planner gives Adam to tensors without elements
    and never offers absurd blockings (``candidates``); a reshaped tensor is priced the same way."""
    from .candidates import offered

    return not any(d == 0 for d in shape) and offered(shape, cfg, opts)


def predicted_peak(plan: Plan, spec: ModelSpec, configs: dict[str, MethodConfig]) -> int:
    """Today's predicted peak with the plan's settings (same memory model as ``make_plan``)."""
    s = plan.settings
    prec = Precision(s.param_dtype, s.grad_dtype, s.master_weights)
    par = parallel.from_settings(s)
    options = {e.name: e.options() for e in plan.tensors}
    if par.mesh is not None:  # one device's: specs as the plan recorded them (planner.mesh)
        import dataclasses

        from .mesh import plan_specs, state_by_device

        specs = plan_specs(plan)
        spec = ModelSpec([dataclasses.replace(p, spec=specs.get(p.name, ())) for p in spec.params], spec.buffers,
                         spec.source)
    fixed = parallel.fixed_per_rank(spec, prec, par)
    shapes = {p.name: p.shape for p in spec.params}
    state = sum(total_bytes(state_layout(shapes[n], c, plan.defaults)) for n, c in configs.items())
    if par.mesh is not None:
        state = max(state_by_device([(shapes[n], c, plan.defaults.model_copy(update=options.get(n, {})),
                                      specs.get(n, ())) for n, c in configs.items()], par.mesh_sizes))
    ranks = None
    if par.world > 1:
        owners = {e.name: e.owners for e in plan.tensors if e.owners is not None}
        rest = {e.name: e.owner for e in plan.tensors if e.owner is not None}
        try:  # the plan's own assignment; a changed model falls back to a fresh one
            ranks = parallel.rank_state(spec, configs, plan.defaults, par, owners=owners, rest_owner=rest,
                                        prec=prec) \
                if par.owner else parallel.rank_state(spec, configs, plan.defaults, par)
        except (KeyError, IndexError, ValueError):
            ranks = parallel.rank_state(spec, configs, plan.defaults, par, prec=prec)
        state = ranks.largest + ranks.exchange
    fixed = parallel.fixed_per_rank(spec, prec, par, ranks)
    from .transients import step_workspace

    local = parallel.local_spec(spec, par)
    ws = step_workspace([(p.shape, p.dtype, configs[p.name], options.get(p.name, {})) for p in local.params
                         if p.name in configs], plan.defaults, s.param_dtype, s.master_weights, par.owner)[0]
    act = plan.totals.activation_bytes
    ret = plan.activations.retained_bytes if act is not None and plan.activations is not None else 0
    return step_peak(fixed, state, ws, spec.buffers_bytes if plan.totals.buffers_bytes else 0, act, ret)


def _device_state_check(plan: Plan, spec: ModelSpec, configs: dict[str, MethodConfig],
                        tolerance_pct: float) -> CheckResult:
    """Mesh plans: today's bytes on the largest device (``planner.mesh``, the plan's specs) against the plan's;
    the whole state can stay the same while the placement rule changes what one device holds."""
    from .mesh import plan_specs, state_by_device

    specs = plan_specs(plan)
    shapes = {p.name: p.shape for p in spec.params}
    options = {e.name: e.options() for e in plan.tensors}
    today = max(state_by_device([(shapes[n], c, plan.defaults.model_copy(update=options.get(n, {})),
                                  specs.get(n, ())) for n, c in configs.items()], plan.settings.mesh))
    old = plan.totals.state_bytes_per_device or 0
    pct = 100.0 * (today - old) / old if old else 0.0
    return CheckResult(name="device-state-bytes", ok=not _grew(old, today, tolerance_pct),
                       message=f"optimizer state on the largest device {old:,} → {today:,} bytes ({pct:+.2f}%, "
                               f"tolerance {tolerance_pct:g}%)")


#: Measures a plan on a device: (plan, model, spec, configs) → Measurement (``sketchplan.verify.measure_plan``).
Measurer = Callable[[Plan, object, ModelSpec, "dict[str, MethodConfig]"], Measurement]


def check(plan: Plan, model, *, plan_path: str = "plan", tolerance_pct: float = 0.0, budget: int | None = None,
          measurer: Measurer | None = None, source: str | None = None) -> CheckReport:
    """Compare ``plan`` with today's ``model`` (see module docstring); never raises for a regression.

    ``source``: where today's model came from (``check --model X``), recorded in the report; default the plan's.

    ``measurer``: when given, the planned optimizer is measured with it (``sketchplan.verify.check`` passes
    ``measure_plan``, which builds the torch optimizer; the planner itself never imports a framework)."""
    source = source or plan.model.source
    spec = analyze(model, source=source)
    from .analysis import check_spec

    check_spec(spec, f"model {spec.source!r}" if spec.source else "the model")
    diffs, configs = diff_tensors(plan, spec, tolerance_pct)
    checks: list[CheckResult] = []

    structural = [d for d in diffs if d.status in ("added", "removed", "reshaped", "now-frozen", "now-trainable")]
    checks.append(CheckResult(
        name="structure", ok=not structural,
        message="the model has the plan's tensors" if not structural else
        f"{len(structural)} tensor(s) changed since the plan: " +
        ", ".join(f"{d.name} ({d.status})" for d in structural[:5]) + (" …" if len(structural) > 5 else "") +
        "; refresh it with `sketchplan plan --update`"))

    old_state = plan.totals.state_bytes
    new_state = sum(d.new_bytes for d in diffs)
    grown = [d for d in diffs if d.status in ("grown", "shrunk", "same") and d.offending]
    total_grew = _grew(old_state, new_state, tolerance_pct)
    ok = not grown and not total_grew
    pct = 100.0 * (new_state - old_state) / old_state if old_state else 0.0
    checks.append(CheckResult(
        name="state-bytes", ok=ok,
        message=f"optimizer state {old_state:,} → {new_state:,} bytes ({pct:+.2f}%, tolerance {tolerance_pct:g}%)"
        + (f"; {len(grown)} tensor(s) grew beyond tolerance" if grown else "")))

    if plan.settings.mesh is not None and not structural:
        checks.append(_device_state_check(plan, spec, configs, tolerance_pct))
    peak = predicted_peak(plan, spec, configs)
    if budget is None and plan.budget.memory_bytes is not None:
        budget = plan.budget.available()
    if budget is not None:
        par = parallel.from_settings(plan.settings)
        where = f" per rank ({par.kind}, {par.world} ranks)" if par.world > 1 else ""
        if par.mesh is not None:
            from .mesh import mesh_label

            where = f" per device (mesh {mesh_label(par.mesh_sizes)})"
        checks.append(CheckResult(name="budget", ok=peak <= budget,
                                  message=f"predicted peak{where} {peak:,} bytes vs budget {budget:,} bytes"))

    measured = None
    if measurer is not None and structural:
        checks.append(CheckResult(name="measured-state-bytes", ok=False,
                                  message="not measured: the model no longer matches the plan"))
    elif measurer is not None:
        measured = measurer(plan, model, spec, configs)
        bad = [t for t in measured.tensors if t.measured_bytes != t.predicted_bytes]
        checks.append(CheckResult(
            name="measured-state-bytes", ok=not bad,
            message=(f"allocated state equals the prediction for all {len(measured.tensors)} measured tensors "
                     f"({measured.measured_state_bytes:,} bytes, {measured.mode})") if not bad else
            f"{len(bad)} tensor(s) allocate other bytes than predicted: " +
            ", ".join(f"{t.name} {t.predicted_bytes:,} → {t.measured_bytes:,}" for t in bad[:5])))
        if measured.measured_device_bytes is not None:
            ok = measured.measured_device_bytes == measured.predicted_device_bytes
            diff = [(i, p, m) for i, (p, m) in enumerate(zip(measured.predicted_device_bytes or [],
                                                                measured.measured_device_bytes)) if p != m]
            checks.append(CheckResult(
                name="measured-device-bytes", ok=ok,
                message=(f"each of the {len(measured.measured_device_bytes)} devices holds the predicted optimizer "
                         f"state ({max(measured.measured_device_bytes):,} bytes on the largest)") if ok else
                f"{len(diff) or 'the'} device(s) hold other bytes than predicted: " +
                ", ".join(f"device {i} {p:,} → {m:,}" for i, p, m in diff[:4])))
        if measured.peak_allocated_bytes is not None:
            ok = measured.predicted_peak_bytes is None or measured.peak_allocated_bytes <= measured.predicted_peak_bytes
            checks.append(CheckResult(
                name="measured-peak", ok=ok,
                message=f"peak allocated during the optimizer step {measured.peak_allocated_bytes:,} bytes "
                        f"({'MemTracker' if measured.device == 'cpu' else 'max_memory_allocated'}) vs predicted "
                        f"peak {measured.predicted_peak_bytes:,} bytes" + ("" if ok else
                                                                          ": the prediction is too low")))

    all_ok = all(c.ok for c in checks)
    shown = [d for d in diffs if d.status != "same" or d.offending]
    return CheckReport(plan=plan_path, model=source or "", ok=all_ok, exit_code=0 if all_ok else 1,
                       tolerance_pct=tolerance_pct, budget_bytes=budget, old_state_bytes=old_state,
                       new_state_bytes=new_state, new_peak_bytes=peak, checks=checks, tensors=shown,
                       measured=measured)


def junit_xml(report: CheckReport) -> str:
    """The report as JUnit XML: one ``testcase`` per check, failures carry the message."""
    import xml.etree.ElementTree as ET

    failures = sum(not c.ok for c in report.checks)
    suite = ET.Element("testsuite", name="sketchplan check", tests=str(len(report.checks)),
                       failures=str(failures), errors="0", skipped="0")
    for c in report.checks:
        case = ET.SubElement(suite, "testcase", classname=f"sketchplan.check.{report.plan}", name=c.name)
        if not c.ok:
            fail = ET.SubElement(case, "failure", message=c.message, type="regression")
            lines = [f"{d.name}: {d.status} {d.old_bytes:,} -> {d.new_bytes:,} ({d.delta:+,})"
                     for d in report.tensors if d.offending]
            fail.text = "\n".join(lines)
        else:
            ET.SubElement(case, "system-out").text = c.message
    root = ET.Element("testsuites", tests=suite.get("tests"), failures=suite.get("failures"))
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)
