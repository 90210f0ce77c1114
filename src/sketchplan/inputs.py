"""Reading the files users give sketchplan (plans, profiles, spectra, shapes files, ``config.json``) with limits,
so that no file can cost more than its size suggests.

- Size: at most ``MAX_FILE_BYTES`` are read (the check reads one byte more, never the whole of a larger file);
  the path must be a regular file (not a directory, a FIFO or a device).
- YAML: safe loading only (no Python objects are ever constructed), built straight from the parser's events
  without PyYAML's node graph, so a file costs about what its values cost (a node graph costs ~360 bytes per
  value: 180 MB for a 1 MB list of numbers). While building, nesting deeper than ``MAX_DEPTH``, more than
  ``MAX_NODES`` values, or aliases expanding the document by more than ``MAX_ALIAS_NODES`` values ("billion
  laughs") are refused. Anchors and aliases are otherwise fine: an alias shares the anchored object, and the
  count includes what later validation will walk.
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


_TAG = "tag:yaml.org,2002:"
_PLAIN_COLLECTION_TAGS = (None, "!", _TAG + "seq", _TAG + "map")
_NO_KEY = object()


class _Frame:
    __slots__ = ("obj", "is_map", "anchor", "start", "key", "merges")

    def __init__(self, obj, is_map: bool, anchor: str | None, start: int):
        self.obj, self.is_map, self.anchor, self.start = obj, is_map, anchor, start
        self.key = _NO_KEY
        self.merges: list[list[dict]] = []


def _build(loader, where: str, how_to_fix: str) -> object:
    """One YAML document built straight from the parser's events (no node graph: a file costs about what the
    Python objects it holds cost), with the limits checked as it goes. Scalars are resolved and constructed by
    PyYAML's safe constructor, so values are exactly ``yaml.safe_load``'s; merge keys (``<<``) behave as in
    PyYAML; collection tags other than the plain ones are refused (sketchplan's files never use them)."""
    anchors: dict[str, tuple[object, int]] = {}  # anchor → (object, expanded node count)
    stack: list[_Frame] = []
    total = physical = documents = 0
    result = None

    def bad(what: str) -> UserError:
        return UserError(f"{where} is not valid YAML for sketchplan ({what}); {how_to_fix}.")

    def emit(value, size: int) -> None:
        nonlocal result
        if not stack:
            result = value
            return
        top = stack[-1]
        if not top.is_map:
            top.obj.append(value)
        elif top.key is _NO_KEY:
            if isinstance(value, (list, dict)):
                raise bad("found an unhashable key")
            top.key = value
        else:
            key, top.key = top.key, _NO_KEY
            if key is _MERGE:
                sources = value if isinstance(value, list) else [value]
                if not all(isinstance(m, dict) for m in sources):
                    raise bad("a merge key '<<' must name mappings")
                top.merges.append(sources)
            else:
                top.obj[key] = value

    while loader.check_event():
        ev = loader.get_event()
        if isinstance(ev, yaml.ScalarEvent):
            tag = ev.tag if ev.tag not in (None, "!") else loader.resolve(yaml.ScalarNode, ev.value, ev.implicit)
            if tag == _TAG + "merge" and stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
                value = _MERGE
            elif tag == _TAG + "value" and stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
                value = ev.value  # '=' as a key is a string (as PyYAML); as a value it has no constructor
            else:
                construct = loader.yaml_constructors.get(tag)
                if construct is None or construct is loader.yaml_constructors.get(None):
                    raise bad(f"the tag {tag!r} is not allowed")
                value = construct(loader, yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style))
            total += 1
            physical += 1
            if ev.anchor is not None:
                anchors[ev.anchor] = (value, 1)
            emit(value, 1)
        elif isinstance(ev, yaml.AliasEvent):
            if ev.anchor not in anchors:
                raise _limits_error(where, f"uses the alias *{ev.anchor} before its anchor &{ev.anchor} is "
                                           "complete", how_to_fix)
            value, size = anchors[ev.anchor]
            total += size
            physical += 1
            if total - physical > MAX_ALIAS_NODES:
                raise _limits_error(where, f"uses YAML aliases that expand to more than {MAX_ALIAS_NODES:,} "
                                           "extra nodes (an alias bomb?)", how_to_fix)
            emit(value, size)
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if ev.tag not in _PLAIN_COLLECTION_TAGS:
                raise bad(f"the tag {ev.tag!r} is not allowed")
            stack.append(_Frame({} if isinstance(ev, yaml.MappingStartEvent) else [],
                                isinstance(ev, yaml.MappingStartEvent), ev.anchor, total))
            total += 1
            physical += 1
            if len(stack) > MAX_DEPTH:
                raise _limits_error(where, f"nests deeper than {MAX_DEPTH} levels", how_to_fix)
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            frame = stack.pop()
            obj = frame.obj
            if frame.merges:  # explicit keys win, then earlier merges over later ones (as PyYAML)
                merged: dict = {}
                for sources in frame.merges:
                    for m in reversed(sources):
                        merged.update(m)
                merged.update(obj)
                obj = merged
            if frame.anchor is not None:
                anchors[frame.anchor] = (obj, total - frame.start)
            emit(obj, total - frame.start)
        elif isinstance(ev, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise bad("it holds more than one document")
        if total > MAX_NODES:
            raise _limits_error(where, f"holds more than {MAX_NODES:,} values", how_to_fix)
    return result


_MERGE = object()


def load_yaml(text: str, where: str, how_to_fix: str) -> object:
    """Safe-load ``text`` (one document) within the module's limits; any problem is a ``UserError`` naming
    ``where``. Never constructs Python objects other than plain data."""
    loader = _Loader(text)
    try:
        return _build(loader, where, how_to_fix)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise UserError(f"{where} is not valid YAML ({_first_line(exc)}); {how_to_fix}.") from None
    finally:
        loader.dispose()


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
