"""Test helper: a Plan built directly from the layouts (stands in for the planner's ``uniform_plan``)."""

from __future__ import annotations

from typing import Callable

import torch

from sketchplan.optimizers import MethodConfig, OptimizerDefaults, state_layout, total_bytes
from sketchplan.planner.plan import Budget, ModelInfo, Plan, TensorEntry, Totals


def fingerprint(model: torch.nn.Module) -> str:
    try:
        from sketchplan.planner.analysis import model_fingerprint
    except ImportError:
        return "no-fingerprint-yet"
    return model_fingerprint(model)


def make_plan(model: torch.nn.Module, cfg: MethodConfig | Callable[[str, tuple], MethodConfig | None],
              defaults: OptimizerDefaults | None = None) -> Plan:
    """Every trainable tensor gets ``cfg`` (or ``cfg(name, shape)``), state bytes from the layouts."""
    defaults = defaults or OptimizerDefaults()
    canonical = {id(p): n for n, p in model.named_parameters()}
    tied: dict[str, list[str]] = {n: [] for n in canonical.values()}
    for n, p in model.named_parameters(remove_duplicate=False):
        if canonical[id(p)] != n:
            tied[canonical[id(p)]].append(n)
    entries = []
    for n, p in model.named_parameters():
        shape = tuple(p.shape)
        c = (cfg(n, shape) if callable(cfg) else cfg) if p.requires_grad else None
        fields = {} if c is None else {k: v for k, v in c.model_dump().items()}
        nbytes = 0 if c is None else total_bytes(state_layout(shape, c, defaults))
        entries.append(TensorEntry(name=n, shape=list(shape), dtype=str(p.dtype).removeprefix("torch."),
                                   trainable=p.requires_grad, tied=tied[n], state_bytes=nbytes, **fields))
    pbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    sbytes = sum(e.state_bytes for e in entries)
    return Plan(created_by="tests", budget=Budget(), defaults=defaults, tensors=entries,
                model=ModelInfo(source="tests", fingerprint=fingerprint(model), n_params=pbytes,
                                n_trainable=pbytes, n_tensors=len(entries)),
                totals=Totals(params_bytes=pbytes, grads_bytes=pbytes, state_bytes=sbytes, workspace_bytes=0,
                              peak_bytes=2 * pbytes + sbytes, score=0.0))


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
    "adam_bf16_nomom": MethodConfig(method="adam", momentum="none"),
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
