"""Training sanity on real data: an MLP on scikit-learn's digits (1797 8×8 images), 60 minibatch steps.

Learning rates (documented in docs/optimizers.md): every method at the same η = 0.05 except extreme tensoring
(η = 0.5: AdaGrad-style steps shrink as 1/√t). Matrix methods use shampoo_eps = 1e-6, merge_dims = 1 (keep the
layers as matrices), precondition_frequency = 5, Adam grafting and float32 momentum; Sketchy uses rank 16.
"""

from __future__ import annotations

import pytest
import torch

from sketchplan.optimizers import Adam, BlockedShampoo, ExtremeTensoring, KrADagrad, Shampoo, Sketchy

LR = 0.05
MATRIX = dict(shampoo_eps=1e-6, merge_dims=1, precondition_frequency=5)
MAKERS = {
    "torch_adamw": lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=0.0),
    "adam": lambda p: Adam(p, lr=LR),
    "shampoo": lambda p: Shampoo(p, lr=LR, **MATRIX),
    "blocked_shampoo": lambda p: BlockedShampoo(p, lr=LR, block_size=32, **MATRIX),
    "sketchy": lambda p: Sketchy(p, lr=LR, rank=16, **MATRIX),
    "kradagrad": lambda p: KrADagrad(p, lr=LR, **MATRIX),
    "extreme_tensoring": lambda p: ExtremeTensoring(p, lr=0.5),
}


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def _train(make, x, y, steps=60, batch=256):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    loss_fn = torch.nn.functional.cross_entropy
    with torch.no_grad():
        start = loss_fn(model(x), y).item()
    opt = make(model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        return start, loss_fn(model(x), y).item()


@pytest.fixture(scope="module")
def results(digits):
    return {name: _train(make, *digits) for name, make in MAKERS.items()}


@pytest.mark.parametrize("name", list(MAKERS))
def test_loss_drops_well_below_start(results, name):
    start, end = results[name]
    assert end < 0.1 * start


@pytest.mark.parametrize("name", ["shampoo", "sketchy"])
def test_matrix_methods_beat_adamw_at_equal_steps(results, name):
    assert results[name][1] < results["torch_adamw"][1]
