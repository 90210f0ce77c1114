"""Issue 17: real transformers models that crashed the planner, built on the meta device from their default
configurations (the full sweep is ``benchmarks/architecture_sweep.py``; this is its fast sample).

- ``dinov3_vit`` and ``lw_detr`` have zero-sized parameters (ZeroDivisionError in Sketchy's workspace before):
  they are planned, every zero-sized tensor gets Adam with empty moments;
- ``llama4`` has complex64 buffers ("unknown dtype 'complex64'" before): they are counted in complex bytes;
- ``albert`` under a budget expanded the exact solver to 2.9 GB before;
- a complex *trainable* tensor is excluded with its reason in the plan and left out by ``build_optimizer``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from sketchplan.planner import make_plan
from sketchplan.planner.analysis import analyze
from sketchplan.planner.plan import Plan

transformers = pytest.importorskip("transformers")

SAMPLE = ["dinov3_vit", "lw_detr", "llama4", "albert", "bert"]


def _build(model_type: str):
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    cfg = transformers.AutoConfig.for_model(model_type)
    cls = getattr(transformers, MODEL_MAPPING_NAMES[model_type])
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return cls(cfg)


@pytest.mark.parametrize("model_type", SAMPLE)
def test_default_configuration_is_analysed_and_planned(model_type):
    model = _build(model_type)
    spec = analyze(model, source=model_type)
    seen, expected = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            expected += p.numel()
    assert spec.n_params == expected  # exact parameter count, tied tensors once
    free = make_plan(spec, None, source=model_type)
    assert Plan.from_data(free.model_dump(mode="json")) == free
    for e in free.tensors:
        if 0 in e.shape and e.trainable:
            assert e.method == "adam" and e.state_bytes == 4  # empty moments, the int32 skip counter
    budget = (min(w.peak_bytes for w in free.what_if) + free.totals.peak_bytes) // 2
    if model_type != "llama4":  # 108 B parameters: the unconstrained plan is enough (and fast)
        tight = make_plan(spec, budget, source=model_type)
        assert tight.totals.peak_bytes <= budget
    if model_type == "llama4":
        complex_buffers = [b for b in spec.buffers if b.dtype == "complex64"]
        assert complex_buffers and spec.buffers_bytes >= sum(b.nbytes for b in complex_buffers)
        assert all(b.nbytes == 8 * b.numel for b in complex_buffers)
    if model_type in ("dinov3_vit", "lw_detr"):
        assert any(0 in e.shape for e in free.tensors)


def test_complex_trainable_tensors_are_excluded_with_a_reason():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bad_models import with_complex_and_empty

    from sketchplan import build_optimizer

    with torch.device("meta"):
        meta = with_complex_and_empty()
    plan = make_plan(meta, None, source="bad_models:with_complex_and_empty")
    c = plan.entry("c")
    assert c.trainable and c.method is None and c.state_bytes == 0 and "complex" in c.excluded
    assert plan.totals.grads_bytes >= 3 * 5 * 8  # its gradient is still counted, in complex bytes
    assert "excluded" not in plan.entry("0.weight").model_dump()  # written only when set
    model = with_complex_and_empty()
    with pytest.warns(RuntimeWarning, match="left out of this optimizer"):
        opt = build_optimizer(plan, model)
    assert all(p.dtype != torch.complex64 for g in opt.param_groups for p in g["params"])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # the empty tensors and the real layer step; nothing crashes
