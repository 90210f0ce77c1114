"""Decoding and encoding compressed optimizer state in torch (the storage is declared in
``methods.compression``: bfloat16, or uint8 codes of the dynamic tree code with one float32 absmax per block of
256 elements, as bitsandbytes' blockwise 8-bit optimizers).

``decoded(state, plain, cfg)`` is the one mechanism every method uses: for the duration of a parameter's step the
state dict holds the decoded tensors (in the state dtype) under their plain names, so the method's rule runs
unchanged; on exit they are encoded back into the stored tensors.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ...methods.compression import BLOCK, SECOND_MOMENTS, coded, dynamic_code
from ...methods.layout import MethodConfig, StateTensor

_TABLES: dict[tuple[bool, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
_LUTS: dict[tuple[bool, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def code_tables(signed: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(code values, midpoints between consecutive values) on ``device``: one shared constant per device."""
    key = (signed, torch.device(device))
    hit = _TABLES.get(key)
    if hit is None:
        code = torch.tensor(dynamic_code(signed), dtype=torch.float32, device=device)
        hit = _TABLES[key] = (code, (code[1:] + code[:-1]) / 2)
    return hit


def bucket_table(signed: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(per 16-bit float32 prefix, the number of midpoints below the smallest float with that prefix; the midpoints
    followed by +inf): the nearest code of y is that count plus one comparison per midpoint inside y's bucket
    (at most two: a bucket spans 2⁻⁷ relative, the codes' midpoints are farther apart except near 1, where the
    unsigned code's spacing 0.9/128 still leaves at most two). A shared constant per device (256 KiB)."""
    key = (signed, torch.device(device))
    hit = _LUTS.get(key)
    if hit is None:
        _, mids = code_tables(signed, device)
        prefix = torch.arange(65536, dtype=torch.int64, device=device) << 16
        bits = torch.where(prefix >= 2**31, prefix - 2**32, prefix).to(torch.int32)
        lo, hi = bits.view(torch.float32), (bits | 0xFFFF).view(torch.float32)
        smallest = torch.nan_to_num(torch.minimum(lo, hi), nan=0.0)
        hit = _LUTS[key] = (torch.searchsorted(mids, smallest, out_int32=True),
                            torch.cat([mids, torch.full((1,), float("inf"), device=device)]))
    return hit


def nearest_code(y: torch.Tensor, signed: bool) -> torch.Tensor:
    """int32 index of the code value nearest to each float32 of ``y`` (= ``searchsorted(midpoints, y)``, ~5×
    faster on CPU): the bucket table's count, then two comparisons with the next midpoint."""
    lut, mids = bucket_table(signed, y.device)
    key = (y.view(torch.int32) >> 16) & 0xFFFF
    k = lut.index_select(0, key)
    del key
    for _ in range(2):
        k += y > mids.index_select(0, k)
    return k


def decode(q: torch.Tensor, absmax: torch.Tensor, signed: bool, dtype: torch.dtype) -> torch.Tensor:
    """x ≈ code[q] · absmax of q's block, in ``dtype`` (param-shaped)."""
    code, _ = code_tables(signed, q.device)
    n = q.numel()
    idx = q.reshape(-1).to(torch.int32)
    vals = code.index_select(0, idx)
    del idx
    full = n // BLOCK * BLOCK
    if full:
        vals[:full].view(-1, BLOCK).mul_(absmax[: full // BLOCK, None])
    if full < n:
        vals[full:].mul_(absmax[-1])
    return vals.reshape(q.shape).to(dtype)


def encode(x: torch.Tensor, q: torch.Tensor, absmax: torch.Tensor, signed: bool) -> None:
    """Store x: per block absmax = max|x|, q = index of the code value nearest to x / absmax."""
    flat = x.reshape(-1)
    n = flat.numel()
    if n == 0:
        return
    full = n // BLOCK * BLOCK
    nb = full // BLOCK
    if full:
        absmax[:nb].copy_(torch.linalg.vector_norm(flat[:full].view(-1, BLOCK), float("inf"), dim=1))
    if full < n:
        absmax[nb:].copy_(torch.linalg.vector_norm(flat[full:], float("inf")))
    normed = torch.empty(n, dtype=torch.float32, device=x.device)
    scale = absmax.clamp_min(torch.finfo(torch.float32).tiny)
    if full:
        torch.div(flat[:full].view(-1, BLOCK), scale[:nb, None], out=normed[:full].view(-1, BLOCK))
    if full < n:
        torch.div(flat[full:], scale[nb:], out=normed[full:])
    del scale
    q.view(-1).copy_(nearest_code(normed, signed))


@contextmanager
def decoded(state: dict, plain: list[StateTensor], cfg: MethodConfig):
    """The state with its compressed tensors decoded under their plain names (module docstring)."""
    items = coded(plain, cfg)
    stored = {}
    for t, codec in items:
        s = state[t.name]
        stored[t.name] = s
        dtype = getattr(torch, t.dtype)
        if codec == "int8":
            state[t.name] = decode(s, state[t.name + ".absmax"], signed=t.name not in SECOND_MOMENTS,
                                   dtype=dtype)
        else:
            state[t.name] = s.to(dtype)
    try:
        yield state
    finally:
        for t, codec in items:
            x = state[t.name]
            state[t.name] = stored[t.name]
            if codec == "int8":
                encode(x, stored[t.name], state[t.name + ".absmax"],
                       signed=t.name not in SECOND_MOMENTS)
            else:
                stored[t.name].copy_(x)
            del x
