"""Small real tasks shared by the benchmarks (no downloads: data that Python and scikit-learn ship).

- ``CharLM``: a char-level (byte-level) transformer language model trained on the Python standard library's own
  source text (``stdlib_corpus``), split into train/validation by file.
- ``digits``: sklearn's 8×8 digits for an MLP.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def stdlib_corpus(max_bytes: int = 2_000_000, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of the stdlib's .py files (sorted by path, deterministic), split by file into train / validation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    chunks, total = [], 0
    for p in files:
        data = p.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    n_val = max(1, int(len(chunks) * val_fraction))
    val = b"".join(chunks[-n_val:])
    train = b"".join(chunks[:-n_val])
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()  # noqa: E731
    return as_tensor(train), as_tensor(val)


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CharLM(nn.Module):
    """A small GPT over bytes: embedding, ``layers`` pre-norm blocks, untied head."""

    def __init__(self, d: int = 128, layers: int = 2, heads: int = 4, context: int = 64, vocab: int = 256):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.context = context
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def char_batches(data: torch.Tensor, batch: int, context: int, seed: int):
    """An endless stream of (x, y) next-byte batches drawn with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    while True:
        ix = torch.randint(len(data) - context - 1, (batch,), generator=g)
        x = torch.stack([data[i:i + context] for i in ix])
        y = torch.stack([data[i + 1:i + context + 1] for i in ix])
        yield x, y


def lm_loss(model, batch):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def lm_eval(model, data: torch.Tensor, context: int, batches: int = 8, batch: int = 32, seed: int = 1234) -> float:
    it = char_batches(data, batch, context, seed)
    return sum(float(lm_loss(model, next(it))) for _ in range(batches)) / batches


def digits(seed: int = 0):
    """(x_train, y_train, x_val, y_val) of sklearn's digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    x = torch.tensor(x, dtype=torch.float32)[perm] / 16.0
    y = torch.tensor(y, dtype=torch.long)[perm]
    n = int(0.8 * len(x))
    return x[:n], y[:n], x[n:], y[n:]


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
