"""Small example models for `--model examples.models:NAME` (built on the meta device by sketchplan)."""

import torch.nn as nn


def mlp() -> nn.Module:
    """A 3-layer MLP for 8×8 digits (sklearn's load_digits)."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def convnet() -> nn.Module:
    """A small CNN with conv kernels (4-D weights), batch norm buffers and a classifier head."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


def frozen_backbone() -> nn.Module:
    """A model whose first layer is frozen (fine-tuning): it gets no optimizer state."""
    m = mlp()
    for p in m[0].parameters():
        p.requires_grad_(False)
    return m


def not_a_module():
    return {"weights": [1, 2, 3]}


def mlp_wide() -> nn.Module:
    """``mlp`` with its middle layer widened (256 → 512): a memory regression for ``sketchplan check``."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))


def mlp_reshuffled() -> nn.Module:
    """``mlp`` with the last layer removed and a new one added under another name."""
    m = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    m.add_module("head", nn.Linear(256, 10))
    return m
