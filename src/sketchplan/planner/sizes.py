"""Parsing and printing byte sizes: ``24GiB``, ``80GB``, ``512MiB``, ``1.5TiB`` or a plain byte count."""

from __future__ import annotations

import math
import re

from ..errors import UserError
from ..validate import MAX_BYTES

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float, what: str = "size") -> int:
    """Bytes in ``text``; decimal units (GB) are powers of 10, binary units (GiB, or a bare G) powers of 2.
    Anything else (negative, not finite, above 2^63 bytes) is a ``UserError`` naming ``what``."""
    shown = f"{what} {text!r}".strip()
    if isinstance(text, int) and not isinstance(text, bool) and not 0 <= text <= MAX_BYTES:
        raise UserError(f"{shown} is {'negative' if text < 0 else 'more than any device holds'}; give a "
                        "size from 0 to 2^63 bytes such as 24GiB.")
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if isinstance(text, float):
        value, unit = float(text), ""
    else:
        s = str(text).strip()
        if s.startswith("-"):
            raise UserError(f"{shown} is negative; give a positive size such as 24GiB.")
        m = _RE.match(s)
        if not m or m.group(2).lower() not in _UNITS:
            raise UserError(f"cannot read {shown}; write it like 24GiB, 80GB, 512MiB or a byte count.")
        value, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(value):
        raise UserError(f"{shown} is not a finite size; give a size such as 24GiB.")
    if value < 0:
        raise UserError(f"{shown} is negative; give a positive size such as 24GiB.")
    n = value * _UNITS[unit]
    if not math.isfinite(n) or n > MAX_BYTES:
        raise UserError(f"{shown} is more than any device holds (at most 2^63 bytes, 8 EiB); give a size "
                        "such as 24GiB.")
    return int(round(n))


def fmt_pair(a: int, b: int) -> tuple[str, str]:
    """``fmt_bytes`` of two sizes that differ, with exact byte counts when their rounded forms would read the same
    (a budget of 4.00 GiB "below" a need of 4.00 GiB)."""
    fa, fb = fmt_bytes(a), fmt_bytes(b)
    if fa == fb and a != b:
        return f"{fa} ({a:,} B)", f"{fb} ({b:,} B)"
    return fa, fb


def fmt_bytes(n: float | int) -> str:
    """Human-readable binary size: 1.50 GiB, 768.0 MiB, 12 B (any int, however large; never raises)."""
    if isinstance(n, int) and abs(n) >= 2**1000:
        return f"{'-' if n < 0 else ''}2^{abs(n).bit_length() - 1}+ B"
    n = float(n)
    if not math.isfinite(n):
        return str(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{sign}{n / scale:.2f} {unit}"
    return f"{sign}{int(n)} B"
