"""The default step-time bound (planner.time_bound) and time-aware candidate pruning."""

import pytest

from sketchplan.methods.layout import MethodConfig, OptimizerDefaults
from sketchplan.planner import candidates as cand
from sketchplan.planner import make_plan
from sketchplan.planner.sources import load_spec
from sketchplan.planner.timing import StepTimer
from sketchplan.profiles.cost import CostModel
from sketchplan.profiles.registry import resolve

PROFILE = "cpu-amd-epyc-1t-torch"


def test_pruning_keeps_the_fastest_candidate():
    # without time, Adam (more bytes than a sublinear Sketchy, lower score) is dominated; with time it must stay,
    # and the kept set must contain a candidate as fast as the fastest of the whole grid
    opts = OptimizerDefaults()
    timer = StepTimer(CostModel(resolve(PROFILE)), opts)
    configs = cand.candidate_configs()
    shape = (768, 768)  # GPT-2's attention projection: untimed pruning dropped every fast candidate
    all_t = min(timer(shape, c)[0] for c in configs)
    kept = cand.candidates_for(shape, configs, opts, timer=timer)
    assert min(c.time_ms for c in kept) == pytest.approx(all_t)
    assert any(c.cfg.method == "adam" for c in kept)
    # the bug this guards against, made explicit: a fast candidate with more bytes and a lower score than a slow
    # one survives only when time is part of the dominance test
    fast, slow = MethodConfig(method="adam"), MethodConfig(method="sketchy", rank=16)
    fake = {fast: cand.Candidate(fast, 100, 0, 0.5), slow: cand.Candidate(slow, 10, 0, 0.9)}
    times = {fast: (1.0, {}), slow: (50.0, {})}
    real = cand.evaluate
    try:
        cand.evaluate = lambda shape, cfg, opts, spectrum=None: fake[cfg]
        assert [c.cfg for c in cand.candidates_for(shape, [fast, slow], opts)] == [slow]
        timed = cand.candidates_for(shape, [fast, slow], opts, timer=lambda sh, cfg: times[cfg])
        assert {c.cfg for c in timed} == {fast, slow}
    finally:
        cand.evaluate = real
    # nothing kept is dominated in (bytes, workspace, score, time) by another kept candidate
    for a in kept:
        for b in kept:
            if a is not b:
                assert not (b.state_bytes <= a.state_bytes and b.workspace_bytes <= a.workspace_bytes
                            and b.score >= a.score and b.time_ms <= a.time_ms)


@pytest.fixture(scope="module")
def gpt2():
    return load_spec("gpt2")


def _adam_ms(spec):
    """An all-Adam optimizer's step: the non-finite guard is off there by default (``auto``)."""
    timer = StepTimer(CostModel(resolve(PROFILE)), OptimizerDefaults(nonfinite_guard=False))
    return sum(timer(p.shape, MethodConfig(method="adam"))[0] for p in spec.trainable)


def test_default_bound_is_stated_recorded_and_met(gpt2):
    plan = make_plan(gpt2, "4GiB", hardware=PROFILE)
    adam = _adam_ms(gpt2)
    assert plan.budget.time_budget_ms == pytest.approx(3 * adam, rel=1e-6)
    assert plan.budget.time_budget_source.startswith("default: 3x all-Adam")
    assert plan.totals.step_ms <= plan.budget.time_budget_ms * (1 + 1e-6)
    assert plan.totals.adam_step_ms == pytest.approx(adam, abs=5e-4)  # recorded to 3 decimals (make.py)
    assert plan.totals.forward_backward_ms == pytest.approx(
        6 * gpt2.n_trainable * 8192 / resolve(PROFILE).roofline.peak_flops * 1e3, rel=1e-6)
    free = make_plan(gpt2, "4GiB", hardware=PROFILE, max_step_vs_adam=float("inf"))
    assert free.budget.time_budget_ms is None and free.totals.step_ms > 10 * adam  # the bound is what limits it
    assert plan.totals.score > 0.5  # better than all-Adam's diagonal score within the bound


def test_time_budget_of_one_and_a_half_adam_is_honoured(gpt2):
    adam = _adam_ms(gpt2)
    plan = make_plan(gpt2, "4GiB", hardware=PROFILE, time_budget_ms=1.5 * adam)
    assert plan.totals.step_ms <= 1.5 * adam * (1 + 1e-6)
    assert plan.budget.time_budget_source == "--time-budget-ms"
    assert plan.solver.binding is not None and "time" in plan.solver.binding


def test_time_budget_below_the_fastest_plan_names_it(gpt2):
    from sketchplan.errors import UserError

    with pytest.raises(UserError, match="below the fastest plan that fits the memory budget"):
        make_plan(gpt2, "4GiB", hardware=PROFILE, time_budget_ms=1.0)


@pytest.mark.parametrize("bound", ["--max-step-vs-adam 1", "--time-budget-ms 1.05x Adam"])
def test_a_bound_all_adam_meets_is_met_by_an_unguarded_plan(gpt2, bound):
    """``nonfinite_guard: auto`` leaves the guard out of an all-elementwise optimizer, so all-Adam steps in its
    unguarded time: a bound of 1× (default bound at --max-step-vs-adam 1) or 1.05× that time must give a plan that
    meets it, not be refused or raised to the fastest plan *with* the guard (the candidates' times include it,
    as every tensor of a plan with a matrix method pays it). With ``nonfinite_guard: true`` every plan pays it and
    the explicit budget is out of reach."""
    from sketchplan.errors import UserError

    adam = _adam_ms(gpt2)
    kw = {"max_step_vs_adam": 1.0} if bound.startswith("--max") else {"time_budget_ms": 1.05 * adam}
    plan = make_plan(gpt2, "4GiB", hardware=PROFILE, **kw)
    assert "raised" not in plan.budget.time_budget_source
    assert plan.totals.step_ms <= plan.budget.time_budget_ms * (1 + 1e-6)
    assert {e.method for e in plan.tensors if e.method} <= {"adam", "lion", "adafactor", "muon",
                                                            "extreme_tensoring"}
    if "time_budget_ms" in kw:  # (the default bound would follow: its all-Adam yardstick is guarded then too)
        with pytest.raises(UserError, match="below the fastest plan"):
            make_plan(gpt2, "4GiB", hardware=PROFILE, defaults=OptimizerDefaults(nonfinite_guard=True), **kw)


def test_a_raised_default_bound_is_the_fastest_plan_with_the_guard_as_it_runs():
    """No plan meets 1x all-Adam within a memory budget below all-Adam's: the bound rises to the fastest plan that
    fits, which is all-elementwise here (Adafactor for the matrix) and so runs without the guard: the raised bound
    is that plan's own step (not the fastest guarded plan's, which is slower), and the plan meets it."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(512, 512))
    plan = make_plan(model, "3.5MiB", hardware=PROFILE, methods=("adam", "adafactor", "shampoo", "sketchy"),
                     max_step_vs_adam=1.0)
    assert "raised" in plan.budget.time_budget_source
    assert {e.method for e in plan.tensors} <= {"adam", "adafactor"}
    assert plan.budget.time_budget_ms == pytest.approx(sum(e.step_ms for e in plan.tensors), abs=2e-4)
