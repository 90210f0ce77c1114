"""Example data for `sketchplan probe --data examples.data:NAME` (shipped with scikit-learn: no download)."""

import torch


def digits_batches(batch_size: int = 64, seed: int = 0):
    """sklearn's 8×8 digits as (x, y) float/long batches, shuffled once."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    xs = torch.tensor(x, dtype=torch.float32)[perm] / 16.0
    ys = torch.tensor(y, dtype=torch.long)[perm]
    return [(xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, len(xs) - batch_size + 1, batch_size)]


def loss_fn(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)
