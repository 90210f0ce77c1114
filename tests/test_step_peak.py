"""The training step's peak, predicted and never under (issue 13).

Every figure is compared with torch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``), which counts
every tensor an operator creates and frees — written independently of sketchplan's replays in
``methods/*.workspace_bytes``. Kernel-internal scratch (eigh/SVD work buffers) is no tensor, so the tensor-level
prediction is the plan's peak less ``kernel_scratch_bytes``.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker

from sketchplan.build import build_optimizer
from sketchplan.errors import UserError
from sketchplan.methods import MethodConfig, OptimizerDefaults, group_workspace_bytes
from sketchplan.planner import make_plan, uniform_plan
from sketchplan.planner.activations import preset_inputs, trace_activations

from replay import force_float64_retry, measured_step_transients, random_shapes

tiny = pytest.importorskip("tiny_models")


@pytest.fixture(autouse=True)
def float64_retry(monkeypatch):
    force_float64_retry(monkeypatch)


EVERY_METHOD = [MethodConfig(method="adam"), MethodConfig(method="shampoo"),
                MethodConfig(method="blocked_shampoo", block_size=48),
                MethodConfig(method="sketchy", rank=8, graft="adafactor", momentum="bfloat16"),
                MethodConfig(method="extreme_tensoring", momentum="none"),
                MethodConfig(method="kradagrad", graft="rmsprop")]


#: Roots are refreshed at steps 1 and 3: the first step allocates the state group by group, the third refreshes
#: with every group's state allocated (the steady state's high-water mark).
FAST = OptimizerDefaults(precondition_frequency=2)


def _step_peak(model, opt, steps: int = 3) -> int:
    """MemTracker's peak over ``steps`` optimizer steps with fresh random gradients."""
    peak = 0
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-2
        mt = MemTracker()
        mt.track_external(model, opt)
        with mt:
            opt.step()
        peak = max(peak, sum(s["Total"] for s in mt.get_tracker_snapshot("peak").values()))
    return peak


def _replay_vs_tracker(shapes, cfg, dtype, opts=None):
    # the default start (−1) preconditions from the first refresh, at step precondition_frequency: measure the
    # steps before it and the refresh itself, with a short period so the loop stays cheap
    opts = opts or OptimizerDefaults(precondition_frequency=2)
    measured = measured_step_transients(shapes, cfg, dtype, opts, steps=3)
    dt = str(dtype).replace("torch.", "")
    # the group's figure: Adam's multi-tensor chunks, the matrix methods' kernels batched across tensors
    # (``methods.batching``) or their largest tensor's step
    predicted = group_workspace_bytes([(tuple(s), dt) for s in shapes], cfg, opts, scratch=False)
    return predicted, measured


REPLAY_CFGS = EVERY_METHOD + [MethodConfig(method="adam", momentum="bfloat16"),
                              MethodConfig(method="sketchy", rank=40, block_size=32, graft="adam"),
                              MethodConfig(method="shampoo", graft="sgd", momentum="none"),
                              MethodConfig(method="extreme_tensoring", momentum="float32")]
# issue 19b: SOAP and packed factors
REPLAY_CFGS += [MethodConfig(method="soap"), MethodConfig(method="soap", block_size=16, packed=True, momentum="bfloat16"),
                MethodConfig(method="shampoo", packed=True, graft="sgd"),
                MethodConfig(method="blocked_shampoo", block_size=16, packed=True),
                MethodConfig(method="kradagrad", packed=True, momentum="none")]


@pytest.mark.parametrize("cfg", REPLAY_CFGS, ids=lambda c: c.label())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_each_methods_replay_matches_memtracker(cfg, dtype):
    seed, shapes = random_shapes()
    predicted, measured = _replay_vs_tracker(shapes, cfg, dtype)
    # never under; over by at most the replay's 16-byte scalar allowance and 1.5% (KrADagrad's blocked unfoldings;
    # a CI draw of (31, 79) once found KrADagrad 3.2% over: its roots are copied into the state at once, which the
    # replay now follows, ``kradagrad.copied_roots``)
    assert measured <= predicted <= measured * 1.015 + 64, (seed, shapes, predicted, measured)


def _case(cfg, **opts):
    return cfg, OptimizerDefaults(precondition_frequency=2, **opts)


#: every replayed configuration with the short refresh period, then the options that take other code paths
PER_TENSOR_CASES = [_case(c) for c in REPLAY_CFGS + [
    MethodConfig(method="muon"), MethodConfig(method="lion"), MethodConfig(method="adafactor"),
    MethodConfig(method="kradagrad", graft="sgd", momentum="none"), MethodConfig(method="adam", momentum="none")]]
PER_TENSOR_CASES += [
    _case(MethodConfig(method="kradagrad", graft="sgd", momentum="none"), merge_dims=1, kradagrad_variant="mm"),
    _case(MethodConfig(method="kradagrad"), kradagrad_variant="mm", stats_every=2),
    _case(MethodConfig(method="shampoo", graft="adafactor"), root_method="newton"),
    _case(MethodConfig(method="blocked_shampoo", block_size=16), nesterov=True, stats_every=3),
    _case(MethodConfig(method="shampoo", momentum="bfloat16"), nesterov=True),
    _case(MethodConfig(method="soap"), nesterov=True, merge_dims=1),
    _case(MethodConfig(method="soap", momentum="bfloat16"), nesterov=True),
    _case(MethodConfig(method="muon", momentum="bfloat16"), nesterov=True),
    _case(MethodConfig(method="lion", momentum="bfloat16")),
    _case(MethodConfig(method="adafactor", momentum="bfloat16"), merge_dims=1),
    _case(MethodConfig(method="extreme_tensoring", momentum="bfloat16"), nesterov=True),
    _case(MethodConfig(method="soap", momentum="none")),
    _case(MethodConfig(method="soap", block_size=16), stats_every=2),
    _case(MethodConfig(method="muon", momentum="none")),
    _case(MethodConfig(method="muon", batch_dims=1)),
    _case(MethodConfig(method="lion"), betas=(0.9, 0.99)),
    _case(MethodConfig(method="adafactor", momentum="none")),
    _case(MethodConfig(method="sketchy", rank=4, graft="sgd", momentum="none", block_size=24)),
    _case(MethodConfig(method="kradagrad", block_size=8, graft="adafactor"), kradagrad_variant="mm"),
    # half-precision state: QR in float32 (``kernels.torch.roots.qr_q``), eigh's float64 retry
    _case(MethodConfig(method="soap", momentum="bfloat16"), state_dtype="bfloat16"),
    _case(MethodConfig(method="sketchy", rank=5, graft="adafactor"), state_dtype="bfloat16", fd_variant="subspace"),
    _case(MethodConfig(method="shampoo"), state_dtype="float64"),
    # compressed state (decoded one tensor at a time: ``methods.group_workspace_bytes``)
    _case(MethodConfig(method="adam", compress="int8")),
    _case(MethodConfig(method="adam", compress="bfloat16", momentum="int8")),
    _case(MethodConfig(method="blocked_shampoo", block_size=20, compress="bfloat16")),
    _case(MethodConfig(method="shampoo", compress="int8"), merge_dims=1),
    _case(MethodConfig(method="sketchy", rank=4, compress="int8")),
    _case(MethodConfig(method="soap", compress="bfloat16")),
] + [_case(MethodConfig(method="sketchy", rank=6, graft="adam"), fd_variant=v, stats_every=s)
     for v, s in [("svd", 1), ("gram_small", 2), ("gram_large", 1), ("qr_svd", 1), ("subspace", 2)]]


def _case_id(case) -> str:
    cfg, opts = case
    changed = opts.model_dump(exclude_defaults=True)
    changed.pop("precondition_frequency")
    return " ".join([cfg.label()] + [f"{k}={v}" for k, v in changed.items()])


@pytest.mark.parametrize("case", PER_TENSOR_CASES, ids=_case_id)
def test_each_methods_replay_is_exact_per_tensor(case):
    """One tensor alone (a matrix, a vector, an order-3 tensor of fresh random sizes, each in a random dtype):
    the replay gives MemTracker's step peak plus at most its 16-byte allowance for the step's scalars
    (``transients.SCALARS``), so a wrong size on any line that sets the peak of some tensor shows. Observed over
    16-30 draws of each case (2026-11-25): 0, 8, 12 or 16 bytes over; compressed Adam 48; Sketchy's subspace
    update with ``stats_every`` = 2 or bfloat16 state up to 36 (not traced further). (Sketchy on vectors longer than the rank was
    3·k·sb over until the scaled sketch's temporaries were replayed one at a time; Nesterov momentum with a cast
    buffer 7-12% over until the replays dropped the cast copy, which ``apply_momentum`` frees on return; the int8
    encode-back over by two block-maxima arrays until its replay freed them where ``compression.encode`` does.)"""
    from sketchplan.methods import group_workspace_bytes as group_workspace
    from sketchplan.methods.transients import SCALARS
    from sketchplan.optimizers.torch.compressed import bucket_table, code_tables

    cfg, opts = case
    seed, shapes = random_shapes()
    rng = random.Random(seed)
    slack = SCALARS + (32 if cfg.compress != "none" else 0)
    if cfg.method == "sketchy" and (opts.stats_every > 1 or opts.state_dtype != "float32"):
        slack += 24
    for shape in shapes:
        dtype = rng.choice([torch.float32, torch.bfloat16])
        if cfg.compress != "none":
            for signed in (True, False):  # the shared 8-bit code and bucket tables, allocated once per device
                code_tables(signed, torch.device("cpu"))
                bucket_table(signed, torch.device("cpu"))
            measured = measured_step_transients([shape], cfg, dtype, opts, steps=3)
            predicted = group_workspace([(tuple(shape), str(dtype).replace("torch.", ""))], cfg, opts, scratch=False)
        else:
            predicted, measured = _replay_vs_tracker([shape], cfg, dtype, opts)
        assert measured <= predicted <= measured + slack, (seed, shape, dtype, predicted, measured)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block", [None, 24])
def test_sketchy_subspace_fd_replay_matches_memtracker(dtype, block):
    """The approximate FD variant's replay (``methods.sketchy.subspace_transients``): a cold first step (Y Ω) and
    a warm second one, blocked and not, with the float64 eigh retries forced."""
    rng = random.Random(os.environ.get("SKETCHPLAN_TEST_SEED"))  # fixed only by benchmarks/mutation.py
    seed = rng.randrange(10**6)
    rng.seed(seed)
    shapes = [(rng.randint(30, 120), rng.randint(30, 90)), (rng.randint(2, 6), rng.randint(20, 40), rng.randint(2, 9))]
    cfg = MethodConfig(method="sketchy", rank=rng.randint(2, 12), block_size=block, graft="adam")
    predicted, measured = _replay_vs_tracker(shapes, cfg, dtype, OptimizerDefaults(fd_variant="subspace"))
    assert measured <= predicted <= measured * 1.015 + 64, (seed, shapes, cfg.rank, predicted, measured)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shapes,rank", [([(16, 200)], 10), ([(9, 64, 9)], 9), ([(12, 300), (40, 70)], 11)])
def test_sketchy_subspace_fd_replay_where_the_basis_spans_the_space(dtype, shapes, rank):
    """The ``subspace`` variant with l = d (Q = I: no range finder, B = Y's own halves, no estimate) next to the
    approximating axes of the same tensors: the replay follows both."""
    cfg = MethodConfig(method="sketchy", rank=rank, graft="adam")
    predicted, measured = _replay_vs_tracker(shapes, cfg, dtype, OptimizerDefaults(fd_variant="subspace"))
    assert measured <= predicted <= measured * 1.015 + 64, (shapes, predicted, measured)


@pytest.mark.parametrize("variant", ["mm", "star"])
@pytest.mark.parametrize("block", [None, 8])
def test_kradagrad_order3_replay_matches_memtracker(variant, block):
    """Unmerged order-3 blocks (merge_dims = 1): the one-axis variant's middle axis copies its unfolding, and the
    normalised update keeps X, X̂ and L̃X̂ alive together — both were once predicted 18-25% under."""
    seed, shapes = random_shapes()
    cfg = MethodConfig(method="kradagrad", block_size=block, graft="sgd", momentum="none")
    opts = OptimizerDefaults(precondition_frequency=2, merge_dims=1, kradagrad_variant=variant)
    predicted, measured = _replay_vs_tracker(shapes, cfg, torch.float32, opts)
    # never under; over by up to 5.6% unblocked and 16% blocked on 25 seeds (the blocked replay counts its
    # unfoldings per group)
    slack = 1.2 if block else 1.1
    assert measured <= predicted <= measured * slack + 64, (seed, shapes, predicted, measured)


@pytest.mark.parametrize("cfg", [MethodConfig(method="shampoo", graft="sgd", momentum="none"),
                                 MethodConfig(method="blocked_shampoo", block_size=16, graft="adam")],
                         ids=lambda c: c.label())
def test_newton_root_replay_matches_memtracker(cfg):
    """The coupled-Newton inverse root keeps the identity alive through its iterations (once 14% under)."""
    seed, shapes = random_shapes()
    predicted, measured = _replay_vs_tracker(shapes, cfg, torch.float32,
                                             OptimizerDefaults(precondition_frequency=2, root_method="newton"))
    assert measured <= predicted <= measured * 1.015 + 64, (seed, shapes, predicted, measured)


def _mixed_plan(meta):
    free = make_plan(meta, defaults=FAST)
    for frac in (0.5, 0.65, 0.8):
        try:
            return make_plan(meta, int(free.totals.peak_bytes * frac), defaults=FAST)
        except UserError:
            continue
    raise AssertionError("no budgeted plan found")


@pytest.mark.parametrize("name", list(tiny.MODELS))
def test_predicted_step_peak_is_never_under_and_within_5pct(name):
    torch.manual_seed(random.randrange(10**6))
    model = tiny.MODELS[name]()
    with torch.device("meta"):
        meta = tiny.MODELS[name]()
    plans = [uniform_plan(meta, cfg, FAST) for cfg in EVERY_METHOD] + [_mixed_plan(meta)]
    assert len({e.method for e in plans[-1].tensors if e.method}) > 1  # the budgeted plan mixes methods
    for plan in plans:
        for p in model.parameters():
            p.grad = None
        opt = build_optimizer(plan, model)
        measured = _step_peak(model, opt)
        predicted = plan.totals.peak_bytes - plan.totals.kernel_scratch_bytes
        label = plan.tensors[0].method if plan.solver.binding is None else "budgeted mix"
        assert measured <= predicted <= 1.05 * measured, (name, label, predicted, measured)
        del opt


@pytest.mark.parametrize("name", list(tiny.TRACEABLE))
def test_traced_activations_match_a_real_forward_backward(name):
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = tiny.TRACEABLE[name]()
    batch = preset_inputs(meta, random.randint(2, 4), random.randint(8, 32))
    info = trace_activations(meta, batch)
    model = tiny.TRACEABLE[name]().train()  # the trace is of a training step (transformers builds in eval mode)
    x = batch()
    kept = sum(p.numel() * p.element_size() for p in model.parameters())
    kept += sum(b.numel() * b.element_size() for b in model.buffers())
    mt = MemTracker()
    mt.track_external(model)
    with mt:
        out = model(**x)  # the outputs alive through backward, as the trace assumes
        out.loss.backward()
    measured = sum(s["Total"] for s in mt.get_tracker_snapshot("peak").values()) - kept
    measured += sum(v.numel() * v.element_size() for v in x.values())
    assert abs(info.peak_bytes - measured) <= 0.05 * measured, (name, info.peak_bytes, measured)
    assert info.peak_bytes >= sum(p.numel() * p.element_size() for p in model.parameters())  # grads included
    if info.checkpointed_peak_bytes is not None:
        assert info.checkpointed_peak_bytes <= info.peak_bytes


def test_data_dependent_forward_names_the_fix():
    with torch.device("meta"):
        meta = tiny.mixtral()
    with pytest.raises(UserError, match="cannot be traced.*grouped_mm.*--reserve"):
        trace_activations(meta, preset_inputs(meta, 2, 16))


def test_traced_plan_covers_the_whole_step_and_refuses_a_batch_that_cannot_fit():
    with torch.device("meta"):
        meta = tiny.llama()
    info = trace_activations(meta, preset_inputs(meta, 2, 16))
    plan = make_plan(meta, "64MiB", activations=info)
    t = plan.totals
    assert t.activation_bytes == info.peak_bytes and plan.budget.headroom == 0.10
    assert 0 < info.retained_bytes < info.peak_bytes  # the batch, the logits and the loss outlive the backward
    assert t.peak_bytes == t.params_bytes + t.buffers_bytes + t.state_bytes + max(
        t.grads_bytes + t.workspace_bytes + info.retained_bytes, info.peak_bytes)
    assert t.peak_bytes <= 64 * 2**20 * 0.9
    big = trace_activations(meta, preset_inputs(meta, 64, 128))
    with pytest.raises(UserError, match="lower --batch-size"):
        make_plan(meta, "16MiB", activations=big)


def test_cli_traces_a_preset_and_bad_inputs_exit_2_writing_nothing(tmp_path, capsys):
    from sketchplan.cli import main

    out = tmp_path / "p.yaml"
    assert main(["plan", "--model", "gpt2", "--memory-budget", "4GiB", "--batch-size", "2", "--seq-len", "64",
                 "--out", str(out)]) == 0
    plan = __import__("sketchplan").Plan.load(str(out))
    assert plan.activations.source == "fake-tensor trace" and "input_ids (2, 64)" in plan.activations.inputs
    assert plan.totals.peak_bytes <= 4 * 2**30 * (1 - plan.budget.headroom)
    shapes = tmp_path / "s.yaml"
    shapes.write_text("params: [{name: w, shape: [64, 64]}]\n")
    bad = [
        (["--model", str(shapes), "--batch-size", "2"], "--reserve"),                    # no forward to trace
        (["--model", "examples.models:mlp", "--batch-size", "2"], "--inputs"),          # no input factory
        (["--model", "gpt2", "--batch-size", "64", "--seq-len", "1024"], "--batch-size"),  # cannot fit
        (["--model", "gpt2", "--seq-len", "64"], "--batch-size"),
    ]
    for argv, fix in bad:
        dest = tmp_path / "never.yaml"
        capsys.readouterr()
        assert main(["plan", "--memory-budget", "2GiB", "--out", str(dest), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert fix in err and "Traceback" not in err and err.count("\n") <= 2, err
        assert not dest.exists()


@pytest.mark.parametrize("name", list(tiny.TRACEABLE))
def test_whole_training_step_peak_is_never_under_and_within_5pct(name):
    """zero_grad(set_to_none) → forward → backward → step, each iteration under MemTracker, against the plan's
    whole-step peak made with the traced activations (the budgeted mix and all-Shampoo)."""
    torch.manual_seed(random.randrange(10**6))
    with torch.device("meta"):
        meta = tiny.TRACEABLE[name]()
    batch = preset_inputs(meta, random.randint(2, 4), random.randint(8, 32))
    info = trace_activations(meta, batch)
    free = make_plan(meta, defaults=FAST, activations=info)
    plans = [uniform_plan(meta, MethodConfig(method="shampoo"), FAST)]
    for frac in (0.75, 0.9, 1.0):
        try:
            plans.append(make_plan(meta, int(free.totals.peak_bytes / 0.9 * frac), defaults=FAST, activations=info))
            break
        except UserError:
            continue
    for plan in plans:
        model = tiny.TRACEABLE[name]().train()
        opt = build_optimizer(plan, model)
        measured = 0
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            x = batch()
            mt = MemTracker()
            mt.track_external(model, opt, *x.values())
            with mt:
                out = model(**x)
                out.loss.backward()
                opt.step()
            del out
            measured = max(measured, sum(s["Total"] for s in mt.get_tracker_snapshot("peak").values()))
        t = plan.totals
        from sketchplan.planner.memory import FixedBytes, step_peak

        # tensor level (MemTracker cannot see eigh/SVD scratch): the plan's formula without the scratch
        predicted = step_peak(FixedBytes(t.params_bytes, t.grads_bytes, t.master_bytes), t.state_bytes,
                              t.workspace_bytes - t.kernel_scratch_bytes, t.buffers_bytes, info.peak_bytes,
                              info.retained_bytes)
        if t.activation_bytes is not None:
            assert t.peak_bytes >= predicted
        assert measured <= predicted <= 1.05 * measured, (name, predicted, measured, t.state_bytes, t.activation_bytes)


@pytest.mark.parametrize("shape", [(31, 79), (79, 31), (60, 79)])
def test_kradagrad_roots_are_freed_axis_by_axis(shape):
    """KrADagrad copies each root into its state at once (Shampoo keeps it bound until the next axis): with the
    smaller axis first the replay once held its d₀ × d₀ root through the larger axis's eigh (3.2–5.6% over)."""
    cfg = MethodConfig(method="kradagrad", graft="rmsprop")
    predicted, measured = _replay_vs_tracker([shape], cfg, torch.bfloat16)
    assert measured <= predicted <= measured + 64, (shape, predicted, measured)
