"""Issue 17: property-based fuzzing of the files sketchplan reads (hypothesis).

Plans (mutated valid plans: leaves replaced by hostile values, keys deleted or added, subtrees duplicated,
text truncated, bytes flipped, aliases inserted; and random YAML, text and bytes) go through ``show`` and
``check``; shapes files (mutated valid ones as YAML and JSON, and random ones) through ``plan``. For every
case: no exception escapes ``main`` (no traceback), the exit code is 0 (or 1: a regression, for ``check``) or
2 with exactly one line ``error: …``, the input is unchanged, nothing but the requested output is written,
no temporary remains, whatever ``plan`` accepts it writes as a plan that loads again, and each case ends
within a bounded time (hypothesis' deadline, and a hard alarm against hangs).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sketchplan.cli import main  # noqa: E402

HARD_LIMIT_S = 30  # a case that runs longer is a hang (the alarm fails it)
FUZZ = settings(max_examples=40, deadline=timedelta(seconds=10), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # capsys is drained per case

GOOD_SHAPES = {"params": [{"name": "enc.weight", "shape": [64, 32]}, {"name": "enc.bias", "shape": [64]},
                          {"name": "emb", "shape": [100, 16], "dtype": "bfloat16"},
                          {"name": "frozen.w", "shape": [8, 8], "trainable": False}]}

EDGE_INTS = [0, 1, -1, 2, 255, 2**31 - 1, 2**31, 2**48, 2**48 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63)]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1.0, 1.5, -1.0, 1e-300, 1e300, float("inf"), float("-inf"), float("nan")]


def values():
    scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.integers(-10**6, 10**6),
                        st.sampled_from(EDGE_FLOATS), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=12), st.sampled_from(["adam", "sketchy", "float32", "complex64", ".inf",
                                                               "24GiB", "", "~", "null"]))
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) |
                        st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for k in path:
        node = node[k]
    return node


@st.composite
def mutated(draw, good: dict):
    data = copy.deepcopy(good)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _get(data, path[:-1]), path[-1]
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "duplicate"]))
        if op == "replace":
            parent[key] = draw(values())
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(values())
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
    return data


@st.composite
def as_text(draw, data, fmt: str = "yaml"):
    """``data`` written as YAML (or JSON), then maybe damaged: truncated, bytes flipped, an alias inserted."""
    try:
        text = json.dumps(data) if fmt == "json" else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except (ValueError, TypeError):
        text = repr(data)
    raw = text.encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["as is", "as is", "truncate", "flip", "alias"]))
    if how == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    elif how == "alias" and fmt == "yaml":
        raw = b"x: &x [" + b", ".join([b"1"] * 50) + b"]\ny: [" + b", ".join([b"*x"] * 50) + b"]\n" + raw
    return raw


def random_files():
    return st.one_of(values().flatmap(lambda v: as_text(v)), st.binary(max_size=300),
                     st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))


class _Hang(Exception):
    pass


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    def alarm(signum, frame):
        raise _Hang(f"case ran longer than {HARD_LIMIT_S} s: {argv}")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HARD_LIMIT_S)
    try:
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, out, err


def _check_outcome(code: int, err: str, allowed=(0, 2), names: tuple[str, ...] = ()) -> None:
    """Exit code allowed, no traceback; a refusal is one line naming the file (or one of ``names``)."""
    from hypothesis import event

    event(f"exit {code}")  # --hypothesis-show-statistics shows the mix of accepted and refused files
    assert code in allowed, err
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
        assert any(n in err for n in names), f"the message names none of {names}: {err}"


def _leftovers(d: Path, expected: set[str]) -> set[str]:
    return {n for n in os.listdir(d)} - expected


@pytest.fixture(scope="module")
def good_plan():
    from sketchplan.planner import make_plan
    from sketchplan.planner.sources import load_spec

    d = Path(tempfile.mkdtemp())
    shapes = d / "shapes.yaml"
    shapes.write_text(yaml.safe_dump(GOOD_SHAPES))
    plan = make_plan(load_spec(str(shapes)), "64MiB", source=str(shapes))
    return d, yaml.safe_load(plan.to_yaml())


def _plan_case(raw: bytes, good_plan, capsys, cmd: str) -> None:
    d, _ = good_plan
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        tmp = Path(tmp)
        path = tmp / "plan.yaml"
        path.write_bytes(raw)
        argv = ["show", str(path)] if cmd == "show" else ["check", str(path), "--json", str(tmp / "r.json")]
        code, out, err = _run(argv, capsys)
        # check also loads the model the plan names: a mutated source is named as the model
        names = ("plan.yaml",) if cmd == "show" else ("plan.yaml", "model", "--model")
        _check_outcome(code, err, (0, 2) if cmd == "show" else (0, 1, 2), names)
        assert path.read_bytes() == raw
        assert _leftovers(tmp, {"plan.yaml"} | ({"r.json"} if cmd == "check" and code in (0, 1) else set())) == set()


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_plans_show(good_plan, capsys, data):
    raw = data.draw(mutated(good_plan[1]).flatmap(lambda v: as_text(v)))
    _plan_case(raw, good_plan, capsys, "show")


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_plans_check(good_plan, capsys, data):
    raw = data.draw(mutated(good_plan[1]).flatmap(lambda v: as_text(v)))
    _plan_case(raw, good_plan, capsys, "check")


@FUZZ
@given(raw=random_files())
def test_fuzz_random_plan_files(good_plan, capsys, raw):
    _plan_case(raw, good_plan, capsys, "show")


def _shapes_case(raw: bytes, suffix: str, good_plan, capsys) -> None:
    from sketchplan.planner.plan import Plan

    d, _ = good_plan
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        tmp = Path(tmp)
        path, out = tmp / f"shapes{suffix}", tmp / "out.yaml"
        path.write_bytes(raw)
        code, _, err = _run(["plan", "--model", str(path), "--out", str(out)], capsys)
        _check_outcome(code, err, names=(path.name,))
        assert path.read_bytes() == raw
        assert _leftovers(tmp, {path.name} | ({"out.yaml"} if code == 0 else set())) == set()
        if code == 0:
            Plan.load(out)  # whatever is accepted is written as a valid plan


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(["yaml", "json"]))
def test_fuzz_mutated_shapes_files(good_plan, capsys, data, fmt):
    raw = data.draw(mutated(GOOD_SHAPES).flatmap(lambda v: as_text(v, fmt)))
    _shapes_case(raw, "." + fmt, good_plan, capsys)


@FUZZ
@given(raw=random_files(), suffix=st.sampled_from([".yaml", ".json"]))
def test_fuzz_random_shapes_files(good_plan, capsys, raw, suffix):
    _shapes_case(raw, suffix, good_plan, capsys)


def _same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN (YAML's .nan)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


ANCHORED = st.sampled_from([
    "a: &x {p: 1, q: [2, 3]}\nb: *x\nc: {<<: *x, q: 4}\n",
    "base: &b {k: v}\nlist: [*b, *b, {<<: [*b, {k: w, z: 1}]}]\n",
    "- &s hello\n- *s\n- {*s : 1}\n",
    "x: !!str 12\ny: !!int '7'\nz: !!float '1.5'\nw: !!binary aGk=\nd: 2024-01-02\n",
    "? complex key\n: value\n\"quoted: colon\": 'single'\nmulti: |\n  line 1\n  line 2\n",
])


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(values().map(lambda v: yaml.safe_dump(v, sort_keys=False)), ANCHORED,
                     st.text(max_size=80)))
def test_streaming_loader_equals_pyyaml_safe_load(doc):
    """``inputs.load_yaml`` (built from events, with limits) gives exactly the values of PyYAML's safe loader on
    libyaml (what sketchplan loaded with before), and fails (as a UserError) exactly where it fails."""
    from sketchplan.errors import UserError
    from sketchplan.inputs import load_yaml

    try:
        expected = yaml.load(doc, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
        with pytest.raises(UserError):
            load_yaml(doc, "file", "fix it")
        return
    assert _same(load_yaml(doc, "file", "fix it"), expected)
