"""Allocated state equals the plan's prediction, per tensor and to the byte; round trips; fault injection."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from plans import CONFIGS, DEFAULTS, Zoo, make_plan, resume_through_checkpoint, zoo_loss

from sketchplan.kernels.torch import roots
from sketchplan.build import build_optimizer
from sketchplan.methods import state_layout


def _train(model, opt, seeds):
    for s in seeds:
        opt.zero_grad()
        zoo_loss(model, s).backward()
        opt.step()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_bytes_equal_plan(name):
    torch.manual_seed(0)
    model = Zoo()
    plan = make_plan(model, CONFIGS[name], DEFAULTS)
    opt = build_optimizer(plan, model)
    _train(model, opt, [1])
    for pname, p in model.named_parameters():
        entry = plan.entry(pname)
        state = opt.state[p]
        tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
        expected = state_layout(tuple(p.shape), entry.config(), plan.defaults)
        assert [(t.name, t.shape, t.dtype) for t in expected] == [
            (k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()]
        assert sum(v.numel() * v.element_size() for v in tensors.values()) == entry.state_bytes


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    model = Zoo()
    plan = make_plan(model, CONFIGS[name], DEFAULTS)
    reference = copy.deepcopy(model)
    ref_opt = build_optimizer(plan, reference)
    _train(reference, ref_opt, range(20))

    opt = build_optimizer(plan, model)
    _train(model, opt, range(10))
    resumed, opt2 = resume_through_checkpoint(model, opt, plan)
    _train(resumed, opt2, range(10, 20))
    for (n, a), b in zip(reference.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n


def _all_state_finite(opt):
    return all(torch.isfinite(v.float()).all() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nan_and_zero_gradients(name):
    torch.manual_seed(0)
    model = Zoo()
    guarded = DEFAULTS.model_copy(update={"nonfinite_guard": True})  # auto: off for all-elementwise plans
    opt = build_optimizer(make_plan(model, CONFIGS[name], guarded), model)
    _train(model, opt, range(3))
    opt.zero_grad()
    zoo_loss(model, 3).backward()
    model.lin.weight.grad[0, 0] = float("nan")
    model.conv.weight.grad[1, 0, 0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        opt.step()
    assert int(opt.state[model.lin.weight]["nonfinite_skips"]) == 1
    assert int(opt.state[model.conv.weight]["nonfinite_skips"]) == 1
    assert int(opt.state[model.lin.bias]["nonfinite_skips"]) == 0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    _train(model, opt, range(4, 8))
    assert _all_state_finite(opt)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["shampoo", "blocked_shampoo", "kradagrad"])
def test_eigh_failure_keeps_previous_root(name, monkeypatch):
    torch.manual_seed(0)
    model = Zoo()
    opt = build_optimizer(make_plan(model, CONFIGS[name], DEFAULTS), model)
    _train(model, opt, range(3))  # roots computed at step 1
    roots_before = {k: v.clone() for k, v in opt.state[model.lin.weight].items() if ".root" in k}

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("forced failure")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    _train(model, opt, range(3, 6))  # step 4 refreshes roots: both float32 and float64 eigh fail
    state = opt.state[model.lin.weight]
    for k, v in roots_before.items():
        assert torch.equal(state[k], v)
    assert _all_state_finite(opt)


def test_float64_retry(monkeypatch):
    torch.manual_seed(0)
    a = torch.randn(3, 6, 6, dtype=torch.float32)
    s = a @ a.mT
    real = torch.linalg.eigh

    def float32_fails(x, *args, **kwargs):
        if x.dtype == torch.float32:
            raise torch.linalg.LinAlgError("forced failure")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", float32_fails)
    root = roots.symmetric_power(s, -0.25, 1e-6)
    assert root.dtype == torch.float32
    w, v = real(s.double() + 1e-6 * torch.eye(6, dtype=torch.float64))
    ref = (v * w.pow(-0.25).unsqueeze(-2)) @ v.mT
    assert torch.allclose(root.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["adam", "shampoo", "sketchy", "kradagrad", "extreme_tensoring"])
def test_bf16_params_float32_state(name):
    torch.manual_seed(0)
    model = Zoo().to(torch.bfloat16)
    plan = make_plan(model, CONFIGS[name], DEFAULTS)
    opt = build_optimizer(plan, model)
    before = zoo_loss(model, 99).item()
    for s in range(15):
        opt.zero_grad()
        zoo_loss(model, s).backward()
        opt.step()
    for p in model.parameters():
        assert p.dtype == torch.bfloat16
        sq = [v for k, v in opt.state[p].items() if torch.is_tensor(v) and k in ("exp_avg_sq", "et_acc0")]
        assert all(v.dtype == torch.float32 for v in sq)
    assert _all_state_finite(opt)
    after = zoo_loss(model, 99).item()
    assert math.isfinite(after) and after < before


def test_fd_failure_keeps_the_sketch(monkeypatch):
    torch.manual_seed(0)
    model = Zoo()
    opt = build_optimizer(make_plan(model, CONFIGS["sketchy"], DEFAULTS), model)
    _train(model, opt, range(3))
    before = {k: v.clone() for k, v in opt.state[model.lin.weight].items() if k.startswith("blocks")}

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("forced failure")

    monkeypatch.setattr(torch.linalg, "eigh", broken)
    monkeypatch.setattr(torch.linalg, "svd", broken)
    _train(model, opt, range(3, 5))
    for k, v in before.items():
        assert torch.equal(opt.state[model.lin.weight][k], v), k
    assert _all_state_finite(opt)
