"""Reading the files users give sketchplan (plans, profiles, spectra, shapes files, ``config.json``) with limits,
so that no file can cost more than its size suggests.

- Size: at most ``MAX_FILE_BYTES`` are read (the check reads one byte more, never the whole of a larger file);
  the path must be a regular file (not a directory, a FIFO or a device).
- YAML: safe loading only (no Python objects are ever constructed). Before anything is built, the event stream
  is scanned once: nesting deeper than ``MAX_DEPTH``, more than ``MAX_NODES`` nodes, or aliases expanding the
  document by more than ``MAX_ALIAS_NODES`` nodes ("billion laughs") are refused. Anchors and aliases are
  otherwise fine: the loader shares the aliased object, and the scan counts what later validation will walk.
- JSON: ``NaN``, ``Infinity`` and numbers that overflow to infinity are refused, as are nesting deeper than
  ``MAX_DEPTH`` and more than ``MAX_NODES`` values.

Every refusal is a ``UserError`` naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import yaml

from .errors import UserError

MAX_FILE_BYTES = 64 * 2**20  #: plans of models with ~100k tensors are ~30 MB
MAX_DEPTH = 64  #: plans nest 5 deep
MAX_NODES = 4_000_000  #: scalars and collections, aliases expanded
MAX_ALIAS_NODES = 100_000  #: nodes that aliases may add by expansion

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_bytes(path: str | os.PathLike, what: str, how_to_make: str = "check the path",
               limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``), or a ``UserError`` naming ``what``."""
    p = Path(path)
    name = f"{what} {str(p)!r}"
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UserError(f"{name} does not exist; {how_to_make}.") from None
    except OSError as exc:
        raise UserError(f"cannot read {name} ({exc.strerror or _first_line(exc)}); {how_to_make}.") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{name} is a directory, not a file; {how_to_make}.")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{name} is not a regular file (a device, FIFO or socket); {how_to_make}.")
    too_big = UserError(f"{name} is larger than {limit // 2**20} MiB, more than any {what} sketchplan writes; "
                        f"{how_to_make}.")
    if st.st_size > limit:
        raise too_big
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UserError(f"cannot read {name} ({exc.strerror or _first_line(exc)}); check its permissions.") from None
    if len(data) > limit:  # grew while reading, or a file whose size stat does not tell (/proc)
        raise too_big
    return data


def read_text(path: str | os.PathLike, what: str, how_to_make: str = "check the path", how_to_fix: str = "fix it",
              limit: int = MAX_FILE_BYTES) -> str:
    """``read_bytes`` decoded as UTF-8 (a binary file is refused naming the file)."""
    data = read_bytes(path, what, how_to_make, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {str(path)!r} is not text (invalid UTF-8 at byte {exc.start}); {how_to_fix}.") \
            from None


def _limits_error(where: str, what: str, how_to_fix: str) -> UserError:
    return UserError(f"{where} {what}; {how_to_fix}.")


def check_yaml_limits(text: str, where: str, how_to_fix: str) -> None:
    """Scan the YAML event stream of ``text`` and refuse documents beyond the module's limits (nothing built)."""
    loader = _Loader(text)
    anchors: dict[str, int] = {}  # anchor → expanded node count
    open_: list[tuple[str | None, int]] = []  # (anchor, total when it opened) per open collection
    total = 0  # expanded nodes so far
    physical = 0  # nodes written in the file
    try:
        while loader.check_event():
            ev = loader.get_event()
            if isinstance(ev, yaml.AliasEvent):
                if ev.anchor not in anchors:
                    raise _limits_error(where, f"uses the alias *{ev.anchor} before its anchor &{ev.anchor} is "
                                               "complete", how_to_fix)
                total += anchors[ev.anchor]
                physical += 1
                if total - physical > MAX_ALIAS_NODES:
                    raise _limits_error(where, f"uses YAML aliases that expand to more than {MAX_ALIAS_NODES:,} "
                                               "extra nodes (an alias bomb?)", how_to_fix)
            elif isinstance(ev, yaml.ScalarEvent):
                total += 1
                physical += 1
                if ev.anchor is not None:
                    anchors[ev.anchor] = 1
            elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                open_.append((ev.anchor, total))
                total += 1
                physical += 1
                if len(open_) > MAX_DEPTH:
                    raise _limits_error(where, f"nests deeper than {MAX_DEPTH} levels", how_to_fix)
            elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, start = open_.pop()
                if anchor is not None:
                    anchors[anchor] = total - start
            if total > MAX_NODES:
                raise _limits_error(where, f"holds more than {MAX_NODES:,} values", how_to_fix)
    except yaml.YAMLError:
        return  # the loader reports syntax errors with their position
    finally:
        loader.dispose()


def load_yaml(text: str, where: str, how_to_fix: str) -> object:
    """Safe-load ``text`` after ``check_yaml_limits``; a syntax error is a ``UserError`` naming ``where``."""
    check_yaml_limits(text, where, how_to_fix)
    try:
        return yaml.load(text, Loader=_Loader)  # safe loader: never constructs Python objects
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise UserError(f"{where} is not valid YAML ({_first_line(exc)}); {how_to_fix}.") from None


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text} is too large for a float")
    return x


def _no_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def _count(obj: object, where: str, how_to_fix: str) -> None:
    """Depth and value count of parsed JSON, without recursion."""
    stack = [(obj, 1)]
    n = 0
    while stack:
        o, depth = stack.pop()
        n += 1
        if depth > MAX_DEPTH:
            raise _limits_error(where, f"nests deeper than {MAX_DEPTH} levels", how_to_fix)
        if n > MAX_NODES:
            raise _limits_error(where, f"holds more than {MAX_NODES:,} values", how_to_fix)
        if isinstance(o, dict):
            stack.extend((v, depth + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, depth + 1) for v in o)


def load_json(text: str, where: str, how_to_fix: str) -> object:
    """``json.loads`` refusing non-finite numbers and the module's limits; errors name ``where``."""
    try:
        data = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise _limits_error(where, f"nests deeper than {MAX_DEPTH} levels", how_to_fix) from None
    except ValueError as exc:  # JSONDecodeError, non-finite numbers, integers beyond Python's digit limit
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else _first_line(exc)
        pos = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"{where} is not valid JSON ({msg}{pos}); {how_to_fix}.") from None
    _count(data, where, how_to_fix)
    return data
