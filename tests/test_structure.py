"""Stacked experts and fused projections (planner.structure, methods.blocking rule 3).

A Mixtral-style tensor E × 2I × H is E independent matrices whose rows are two fused projections (gate | up).
The checks: the plan records the structure; no state tensor has a factor over the expert axis and no block
straddles the gate|up boundary; and, numerically, one optimizer step on the stacked tensor equals the same
optimizer run separately on every expert's gate and up matrices (any coupling would make them differ).
"""

import pytest
import torch
import torch.nn as nn

from sketchplan.build import build_optimizer
from sketchplan.methods import MethodConfig, OptimizerDefaults, state_layout
from sketchplan.methods.blocking import config_plan, plan_partition
from sketchplan.planner import make_plan, plan_from_configs
from sketchplan.planner.structure import detect

E, I, H = 3, 6, 5


class Experts(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_experts, self.intermediate_dim = E, I
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * I, H, dtype=torch.float64))


class Moe(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = Experts()


class One(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())


def test_detection_from_module_and_from_name():
    assert detect("mlp.experts.gate_up_proj", (8, 28672, 4096)) == {"batch_dims": 1, "splits": (14336, 14336),
                                                                    "split_axis": 0}
    assert detect("mlp.experts.down_proj", (8, 4096, 14336)) == {"batch_dims": 1}
    assert detect("model.layers.0.mlp.c_fc.weight", (768, 3072)) == {}
    assert detect("conv.weight", (64, 3, 3, 3)) == {}  # conv kernels keep the merge rule
    m = Moe()
    assert detect("experts.gate_up_proj", (E, 2 * I, H), m.experts) == {"batch_dims": 1, "splits": (I, I),
                                                                        "split_axis": 0}
    assert "batch_dims" not in detect("experts.gate_up_proj", (E + 1, 2 * I, H), m.experts)  # E ≠ num_experts


@pytest.mark.parametrize("cfg", [
    MethodConfig(method="shampoo"),
    MethodConfig(method="blocked_shampoo", block_size=4, momentum="none"),
    MethodConfig(method="sketchy", rank=2, graft="rmsprop"),
    MethodConfig(method="kradagrad"),
])
def test_stacked_step_equals_independent_matrices(cfg):
    torch.manual_seed(0)
    # merge_dims=1: the reference's 6×5 matrices stay matrices (the stacked tensor's segments are never merged)
    opts = OptimizerDefaults(lr=0.1, state_dtype="float64", precondition_frequency=1, shampoo_eps=1e-6,
                             merge_dims=1)
    model = Moe()
    w0 = model.experts.gate_up_proj.detach().clone()
    plan = plan_from_configs(model, cfg, opts)
    entry = plan.tensors[0]
    assert entry.batch_dims == 1 and entry.splits == [I, I]
    opt = build_optimizer(plan, model)
    refs = {(e, s): One(w0[e, s * I:(s + 1) * I]) for e in range(E) for s in range(2)}
    ref_opts = {k: build_optimizer(plan_from_configs(m, cfg, opts), m) for k, m in refs.items()}
    for _ in range(3):
        g = torch.randn(E, 2 * I, H, dtype=torch.float64)
        model.experts.gate_up_proj.grad = g.clone()
        opt.step()
        for (e, s), m in refs.items():
            m.w.grad = g[e, s * I:(s + 1) * I].clone()
            ref_opts[(e, s)].step()
    got = model.experts.gate_up_proj.detach()
    for (e, s), m in refs.items():
        torch.testing.assert_close(got[e, s * I:(s + 1) * I], m.w.detach(), rtol=1e-9, atol=1e-12)


def test_tiny_mixtral_plan_has_no_factor_across_experts_and_respects_gate_up():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MixtralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=5,
                                     vocab_size=128)
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(cfg)
    opts = OptimizerDefaults()
    for plan in (make_plan(model, methods=["shampoo", "blocked_shampoo", "sketchy"], block_sizes=[64, 128],
                           ranks=[16]),
                 plan_from_configs(model, MethodConfig(method="blocked_shampoo", block_size=64), opts),
                 plan_from_configs(model, MethodConfig(method="sketchy", rank=16), opts)):
        experts = [e for e in plan.tensors if ".experts." in e.name]
        assert len(experts) == 4
        for e in experts:
            assert e.batch_dims == 1, e.name
            c = e.config()
            mp = config_plan(tuple(e.shape), c, plan.defaults)
            assert mp.batched and mp.order == 2
            blocks = plan_partition(mp)
            assert sum(b.count for b in blocks) % 5 == 0
            for b in blocks:
                assert len(b.shape) == 2  # no block has an expert axis: no 5×5 (expert) factor anywhere
                for sl in b.slices:
                    assert isinstance(sl[0], int)
                    if e.name.endswith("gate_up_proj"):
                        rows = sl[1]
                        assert rows.stop <= 96 or rows.start >= 96, (e.name, rows)  # never straddles gate|up
            for t in state_layout(tuple(e.shape), c, plan.defaults):
                if t.name.startswith("blocks"):
                    assert t.shape[0] % 5 == 0  # one per expert and block
                    assert 5 not in t.shape[1:] and 2 * 96 not in t.shape[1:], (e.name, t)
                else:  # graft, momentum: elementwise (param-shaped) or scalars
                    assert t.shape in ((), tuple(e.shape)), (e.name, t)
        gate_up = next(e for e in experts if e.name.endswith("gate_up_proj"))
        assert gate_up.splits == [96, 96] and gate_up.split_axis == 0
