"""Test helpers for the optimizer tests: plans from the planner's ``uniform_plan``, a model with corner cases."""

from __future__ import annotations

from typing import Callable

import torch

from sketchplan.methods import MethodConfig, OptimizerDefaults, state_layout, total_bytes
from sketchplan.planner import uniform_plan
from sketchplan.planner.plan import Plan


def make_plan(model: torch.nn.Module, cfg: MethodConfig | Callable[[str, tuple], MethodConfig],
              defaults: OptimizerDefaults | None = None) -> Plan:
    """The planner's uniform plan, or (``cfg`` a function of name and shape) one entry per tensor re-assigned,
    with state bytes from the layouts."""
    defaults = defaults or OptimizerDefaults()
    if not callable(cfg):
        return uniform_plan(model, cfg, defaults)
    plan = uniform_plan(model, MethodConfig(method="adam"), defaults)
    entries = []
    for e in plan.tensors:
        if e.method is not None:
            c = cfg(e.name, tuple(e.shape))
            nbytes = total_bytes(state_layout(tuple(e.shape), c, defaults))
            e = e.model_copy(update={**c.model_dump(), "state_bytes": nbytes})
        entries.append(e)
    return plan.model_copy(update={"tensors": entries})


class Zoo(torch.nn.Module):
    """Small model with every corner case: conv kernel, embedding tied to the head, 1-D, scalar, prime dims."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 12)
        self.conv = torch.nn.Conv2d(3, 5, 3)
        self.lin = torch.nn.Linear(12, 13)
        self.norm = torch.nn.LayerNorm(13)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.head = torch.nn.Linear(12, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens)
        h = h + self.conv(image).mean(dim=(1, 2, 3))[:, None, None]
        h = self.norm(self.lin(h)).sum(-1, keepdim=True) * self.scale + h
        return self.head(h)


def zoo_loss(model: Zoo, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (4, 6), generator=g)
    image = torch.randn(4, 3, 7, 7, generator=g).to(model.conv.weight.dtype)
    logits = model(tokens, image)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 50).float(), tokens.roll(1, 1).reshape(-1))


#: One configuration per method and option family (small ranks/blocks so blocking and sketching happen).
CONFIGS = {
    "adam": MethodConfig(method="adam"),
    "adam_nomom": MethodConfig(method="adam", momentum="none"),
    "adam_bf16": MethodConfig(method="adam", momentum="bfloat16"),
    "shampoo": MethodConfig(method="shampoo"),
    "blocked_shampoo": MethodConfig(method="blocked_shampoo", block_size=8, graft="rmsprop", momentum="bfloat16"),
    "sketchy": MethodConfig(method="sketchy", rank=4, graft="adafactor", momentum="none"),
    "sketchy_blocked": MethodConfig(method="sketchy", rank=3, block_size=8, graft="sgd"),
    "extreme_tensoring": MethodConfig(method="extreme_tensoring"),
    "kradagrad": MethodConfig(method="kradagrad"),
}

#: Defaults that make the corner cases appear: a small max_precond_dim sends the 50-row embedding to its graft.
DEFAULTS = OptimizerDefaults(lr=1e-2, max_precond_dim=40, precondition_frequency=3, et_max_dim=4,
                             weight_decay=0.01, nesterov=True)


def resume_through_checkpoint(model: Zoo, opt: torch.optim.Optimizer, plan: Plan):
    """A fresh ``Zoo`` and optimizer built from ``plan`` and loaded from a ``torch.save`` of ``model`` and ``opt``
    (the round trip a training job makes when it stops and resumes)."""
    import io

    from sketchplan.build import build_optimizer

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    resumed = Zoo()
    resumed.load_state_dict(saved["model"])
    resumed_opt = build_optimizer(plan, resumed)
    resumed_opt.load_state_dict(saved["opt"])
    return resumed, resumed_opt
