"""build_optimizer: grouping, tied weights, mismatch refusal, and the torch machinery (schedulers, AMP scaler)."""

from __future__ import annotations

import pytest
import torch
from plans import CONFIGS, DEFAULTS, Zoo, make_plan, zoo_loss

from sketchplan.errors import UserError
from sketchplan.build import build_optimizer
from sketchplan.methods import MethodConfig


def _mixed(name: str, shape: tuple) -> MethodConfig:
    if len(shape) <= 1:
        return CONFIGS["adam"]
    return CONFIGS["sketchy"] if name.startswith("lin") else CONFIGS["shampoo"]


def test_groups_by_config_and_tied_weights_once():
    model = Zoo()
    plan = make_plan(model, _mixed, DEFAULTS)
    assert plan.entry("emb.weight").tied == ["head.weight"]
    opt = build_optimizer(plan, model)
    assert sorted(g["method"] for g in opt.param_groups) == ["adam", "shampoo", "sketchy"]
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    zoo_loss(model, 0).backward()
    opt.step()
    for n, p in model.named_parameters():  # every tensor moved, and its state is what the plan counted
        assert not torch.equal(p, before[n]), n
        state = opt.state[p]
        got = sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
        assert got == plan.entry(n).state_bytes, n


def test_frozen_tensors_are_left_out():
    model = Zoo()
    model.norm.weight.requires_grad_(False)
    opt = build_optimizer(make_plan(model, CONFIGS["adam"], DEFAULTS), model)
    assert all(p is not model.norm.weight for g in opt.param_groups for p in g["params"])


def test_mismatches_are_refused_naming_the_tensor():
    model = Zoo()
    plan = make_plan(model, CONFIGS["shampoo"], DEFAULTS)
    bigger = Zoo()
    bigger.lin = torch.nn.Linear(12, 14)
    with pytest.raises(UserError, match="lin.weight"):
        build_optimizer(plan, bigger)
    extra = Zoo()
    extra.extra = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(UserError, match="'extra'"):
        build_optimizer(plan, extra)
    fewer = plan.model_copy(update={"tensors": [e for e in plan.tensors if e.name != "scale"]})
    with pytest.raises(UserError, match="'scale'"):
        build_optimizer(fewer, model)
    ghost = plan.model_copy(update={"tensors": plan.tensors + [plan.entry("scale").model_copy(
        update={"name": "ghost"})]})
    with pytest.raises(UserError, match="'ghost'"):
        build_optimizer(ghost, model)


def test_allow_mismatch_gives_adam_with_a_warning():
    plan = make_plan(Zoo(), CONFIGS["shampoo"], DEFAULTS)
    other = Zoo()
    other.lin = torch.nn.Linear(12, 14)
    other.norm = torch.nn.LayerNorm(14)
    with pytest.warns(RuntimeWarning, match="lin.weight"):
        opt = build_optimizer(plan, other, allow_mismatch=True)
    method = {id(p): g["method"] for g in opt.param_groups for p in g["params"]}
    assert method[id(other.lin.weight)] == "adam" and method[id(other.conv.weight)] == "shampoo"


def test_fingerprint_mismatch_is_refused():
    model = Zoo()
    plan = make_plan(model, CONFIGS["adam"], DEFAULTS)
    wrong = plan.model_copy(update={"model": plan.model.model_copy(update={"fingerprint": "0" * 64})})
    with pytest.raises(UserError, match="fingerprint"):
        build_optimizer(wrong, model)


def test_scheduler_grad_clipping_and_grad_scaler():
    torch.manual_seed(0)
    model = Zoo()
    opt = build_optimizer(make_plan(model, _mixed, DEFAULTS), model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for s in range(3):
        opt.zero_grad()
        scaler.scale(zoo_loss(model, s)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert all(g["lr"] == pytest.approx(DEFAULTS.lr / 8) for g in opt.param_groups)
    assert all(s["step"] == 3 for s in opt.state.values())
