"""Factories, data and losses that a hostile or careless user might name (``--model bad_models:NAME``)."""

import torch
import torch.nn as nn


def no_params() -> nn.Module:
    return nn.Sequential(nn.ReLU(), nn.Flatten())


def all_frozen() -> nn.Module:
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def complex_only() -> nn.Module:
    m = nn.Module()
    m.w = nn.Parameter(torch.zeros(4, 4, dtype=torch.complex64))
    return m


def with_complex_and_empty() -> nn.Module:
    """A real layer, a complex parameter and a zero-sized one: plans exclude the complex tensor, give the empty
    one Adam, and never crash."""
    m = nn.Sequential(nn.Linear(16, 8))
    m.c = nn.Parameter(torch.zeros(3, 5, dtype=torch.complex64))
    m.e = nn.Parameter(torch.zeros(0, 7))
    m.f = nn.Parameter(torch.zeros(7, 0, 3))
    return m


def raises() -> nn.Module:
    raise RuntimeError("config missing")


def returns_none():
    return None


def empty_data():
    return []


def nan_data():
    x = torch.full((8, 64), float("nan"))
    return [(x, torch.zeros(8, dtype=torch.long))]


def wrong_shape_data():
    return [(torch.zeros(8, 3), torch.zeros(8, dtype=torch.long))]


def not_iterable_data():
    return 42


def bad_loss(model, batch):
    return "a string"
