"""One validation layer for numbers: every number a user gives (a flag, a field of a file) is finite, in range
and in its unit, or it is refused with one sentence that names the flag or field and the accepted range.

- ``number``: a float or integer from text or a parsed value (``nan``, ``inf``, ``1e400``, fractions where an
  integer is due, booleans and out-of-range values are refused);
- ``flag_float`` / ``flag_int``: the same as argparse ``type=`` functions, so ``sketchplan plan --lr -1``
  says ``argument --lr: -1 is out of range; give a number > 0 (e.g. 1e-3)`` before any work is done;
- ``check_spec``: a model's tensors have shapes and dtypes a device could hold (the limits below);
- ``pydantic_message``: a pydantic ``ValidationError`` as one sentence naming the field (or its flag).

The limits are far above any real model and keep every computation of the planner exact and bounded in time
and memory: byte counts fit int64 (``MAX_BYTES``), one tensor has at most ``MAX_NUMEL`` elements
(1 PiB of float32), a model at most ``MAX_TENSORS`` tensors, data-parallel world sizes at most
``MAX_WORLD_SIZE`` ranks.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from .errors import UserError

MAX_BYTES = 2**63 - 1  #: sizes (budgets, reserves): int64, what any allocator can address
MAX_NUMEL = 2**48  #: elements of one tensor (1 PiB at float32)
MAX_DIM = MAX_NUMEL  #: one dimension of a tensor
MAX_TENSORS = 1_000_000  #: parameter tensors of one model
MAX_WORLD_SIZE = 2**20  #: data-parallel ranks
MAX_COUNT = 2**100  #: computed byte counts in plans (sums over many tensors): exact, far above any device
MAX_INT = 2**31 - 1  #: ranks, block sizes, frequencies and other counts given as options


def _fmt(x: float | int) -> str:
    return f"{x:g}" if isinstance(x, float) else f"{x:,}" if abs(x) >= 10**6 else str(x)


def describe_range(lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> str:
    """``an integer from 1 to 1_048_576``, ``a number > 0``, ``a number from 0 to 1``…"""
    kind = "an integer" if integer else "a number"
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f"{kind} from {_fmt(lo)} to {_fmt(hi)}"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {_fmt(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '≤'} {_fmt(hi)}")
    return f"{kind} {' and '.join(parts)}" if parts else f"a finite {kind[2:] if integer else 'number'}"


def number(value: Any, what: str, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False, example: str | None = None) -> float | int:
    """``value`` (text or a number) as a finite float (or an int with ``integer``) inside the range, else a
    ``UserError`` naming ``what`` and the accepted range."""
    want = describe_range(lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer)
    hint = f"; give {want}" + (f", e.g. {example}" if example else "") + "."
    shown = repr(value) if isinstance(value, str) else _fmt(value) if isinstance(value, (int, float)) else \
        type(value).__name__
    if isinstance(value, bool) or value is None:
        raise UserError(f"{what} {shown} is not a number{hint}")
    if isinstance(value, str):
        text = value.strip()
        try:
            x: float | int = int(text, 10) if integer else float(text)
        except ValueError:
            if integer:
                try:
                    f = float(text)
                except ValueError:
                    raise UserError(f"{what} {shown} is not a number{hint}") from None
                if math.isfinite(f) and f.is_integer() and abs(f) < 2**53:
                    x = int(f)  # 1e3, 2.0
                else:
                    why = "a finite number" if not math.isfinite(f) else "an integer"
                    raise UserError(f"{what} {shown} is not {why}{hint}") from None
            else:
                raise UserError(f"{what} {shown} is not a number{hint}") from None
    elif isinstance(value, (int, float)):
        x = value
    else:
        raise UserError(f"{what} {shown} is not a number{hint}")
    if isinstance(x, float) and not math.isfinite(x):
        raise UserError(f"{what} {shown} is not a finite number{hint}")
    if integer and not isinstance(x, int):
        if not x.is_integer():
            raise UserError(f"{what} {shown} is not an integer{hint}")
        x = int(x)
    if not integer:
        x = float(x)
    if (lo is not None and (x <= lo if lo_open else x < lo)) or (hi is not None and (x >= hi if hi_open else x > hi)):
        raise UserError(f"{what} {shown} is out of range{hint}")
    return x


def _argparse_type(what_fn, **kw):
    def parse(text: str):
        try:
            return number(text, "", **kw)
        except UserError as exc:
            # argparse prefixes "argument --flag: "; drop our (empty) name
            raise argparse.ArgumentTypeError(str(exc).strip()) from None
    parse.__name__ = what_fn  # argparse names the type in its own messages
    return parse


def flag_float(lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False, example: str | None = None):
    """An argparse ``type=`` for a finite float in range."""
    return _argparse_type("number", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, example=example)


def flag_int(lo=None, hi=None, *, example: str | None = None):
    """An argparse ``type=`` for an integer in range."""
    return _argparse_type("integer", lo=lo, hi=MAX_INT if hi is None else hi, integer=True, example=example)


def pydantic_message(exc, where: str, names: dict[str, str] | None = None) -> str:
    """The first error of a pydantic ``ValidationError`` as ``{where}: field 'a.b' (value …) is invalid
    (input should be greater than 0)``; ``names`` maps field names to the flags that set them."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    names = names or {}
    label = names.get(loc) or (f"field {loc!r}" if loc else "the top level")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        msg = msg[0].lower() + msg[1:] if msg else err["type"]
        if err["type"] == "finite_number":
            msg = "input should be a finite number, not inf or nan"
    value = err.get("input")
    shown = ""
    if err["type"] != "extra_forbidden" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        text = repr(value) if isinstance(value, str) else _fmt(value)
        if len(text) <= 40:
            shown = f" = {text}"
    return f"{where}: {label}{shown} is invalid ({msg.rstrip('.')})"
