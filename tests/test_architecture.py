"""The package's architecture holds: arrows point down only, no import cycle, and the framework-free layers
(methods, planner) import neither torch nor jax. DESIGN.md "Layout" is the contract these tests check.

The import graph is read from the source (every ``import`` statement, module level or inside a function), so a
lazy import into a higher layer is caught as well as an eager one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sketchplan

SRC = Path(sketchplan.__file__).parent
ROOT = SRC.parent.parent

#: Layer of each component (longest prefix wins); an import may go to a lower layer, or stay in its component.
#: Components on one layer do not import each other (torch and JAX backends, profiles and backends, ...).
LAYERS: dict[str, int] = {
    "sketchplan": 0,  # the root __init__: __version__ and a lazy __getattr__; imports nothing at module level
    "sketchplan.errors": 0,
    "sketchplan.pytree": 0,
    "sketchplan.kernels.calls": 0,
    "sketchplan.kernels.timing": 0,
    "sketchplan.validate": 1,  # numbers and their limits
    "sketchplan.kernels": 1,  # the package itself: re-exports kernels.calls
    "sketchplan.files": 3,  # YAML files, over inputs (reading) and outputs (writing)
    "sketchplan.inputs": 2,
    "sketchplan.outputs": 2,
    "sketchplan.methods": 3,
    "sketchplan.kernels.torch": 4,
    "sketchplan.kernels.jax": 4,
    "sketchplan.profiles": 5,
    "sketchplan.optimizers.torch": 5,
    "sketchplan.optimizers.jax": 5,
    "sketchplan.optimizers": 6,  # the package itself: a lazy facade over optimizers.torch
    "sketchplan.planner": 6,
    "sketchplan.build": 7,
    "sketchplan.verify": 8,
    "sketchplan.report": 9,
    "sketchplan.plot": 9,
    "sketchplan.testing": 9,
    "sketchplan.cli": 9,
    "sketchplan.__main__": 9,
    "sketchplan.checkpoint": 8,  # DCP save/load of a built optimizer (above build)
}
#: Components on the top layer form one group (the CLI renders with report and plot).
TOP = {"sketchplan.report", "sketchplan.plot", "sketchplan.testing", "sketchplan.cli", "sketchplan.__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _component(module: str) -> str:
    best = max((c for c in LAYERS if module == c or module.startswith(c + ".")), key=len)
    return "top" if best in TOP else best


def _imports(module: str, path: Path) -> set[str]:
    """The sketchplan modules ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import a.b.c` of a non-module attribute: its module
                name = name.rpartition(".")[0]
            if name.startswith("sketchplan"):
                found.add(name)
    found.discard(module)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    assert all(_component(m) for m in MODULES)
    assert {"sketchplan.methods.adam", "sketchplan.optimizers.torch.adam", "sketchplan.optimizers.jax.adam",
            "sketchplan.kernels.torch.roots", "sketchplan.kernels.jax.roots", "sketchplan.build"} <= MODULES.keys()


def test_backends_have_one_module_per_method():
    """Each backend names its modules after what they hold: one per registered method (blocked Shampoo shares
    Shampoo's step in JAX), the compressed-state wrapper, the constructors — never after the issue that added
    them (a folder says the architecture)."""
    import re

    from sketchplan.methods import METHOD_MODULES

    assert not [m for m in MODULES if re.search(r"issue_?\d", m.rsplit(".", 1)[-1])]
    for backend in ("torch", "jax"):
        have = {m.rsplit(".", 1)[-1] for m in MODULES if m.startswith(f"sketchplan.optimizers.{backend}.")}
        methods = set(METHOD_MODULES) - ({"blocked_shampoo"} if backend == "jax" else set())
        assert methods | {"compressed", "packing"} <= have, (backend, sorted(methods - have))


def test_imports_point_down_only():
    bad = []
    for src, targets in GRAPH.items():
        cs = _component(src)
        ls = LAYERS[cs] if cs != "top" else 9
        for dst in targets:
            cd = _component(dst)
            ld = LAYERS[cd] if cd != "top" else 9
            if cd == cs:
                continue
            if ld >= ls:
                bad.append(f"{src} (layer {ls}) imports {dst} (layer {ld})")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_root_package_imports_nothing_eagerly():
    tree = ast.parse((SRC / "__init__.py").read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_graph_walker_sees_lazy_and_relative_imports():
    """The walker must not be blind: known edges of each kind are found."""
    assert "sketchplan.methods.layout" in GRAPH["sketchplan.methods.adam"]           # relative, module level
    assert "sketchplan.build" in GRAPH["sketchplan.verify"]                          # relative, inside a function
    assert "sketchplan.kernels.torch.frequent_directions" in GRAPH["sketchplan.planner.probe"]  # lazy, 2 levels up
    assert "sketchplan.methods.shampoo" in GRAPH["sketchplan.methods.blocked_shampoo"]  # `from . import shampoo`


def _python(code: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing any of ``block`` fails, as if not installed."""
    blocker = textwrap.dedent(f"""
        import sys
        BLOCK = {block!r}
        class _NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCK:
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None
        sys.meta_path.insert(0, _NotInstalled())
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_planner_and_methods_import_no_framework():
    """``python -X importtime -c "import sketchplan.planner"`` lists neither torch nor jax (nor numpy)."""
    for target in ("sketchplan.planner", "sketchplan.methods", "sketchplan.planner.check",
                   "sketchplan.planner.explain", "sketchplan.planner.solve_time", "sketchplan.build",
                   "sketchplan.optimizers"):
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {target}"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
        assert "sketchplan.methods" in imported or target != "sketchplan.planner"  # the parse is not blind
        frameworks = sorted(m for m in imported if m.split(".")[0] in ("torch", "jax", "jaxlib", "numpy"))
        assert not frameworks, f"import {target} imported {frameworks[:5]}"


def test_plan_a_shapes_file_without_torch_jax_or_numpy(tmp_path):
    shapes = tmp_path / "shapes.yaml"
    shapes.write_text("params:\n  - {name: enc.weight, shape: [512, 256]}\n  - {name: enc.bias, shape: [512]}\n"
                      "  - {name: head.weight, shape: [10, 512], dtype: bfloat16}\n")
    out = tmp_path / "plan.yaml"
    r = _python(f"""
        from sketchplan.cli import main
        code = main(["plan", "--model", {str(shapes)!r}, "--memory-budget", "1GiB", "--out", {str(out)!r}])
        assert code == 0, code
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCK]
        from sketchplan.planner.plan import Plan
        plan = Plan.load({str(out)!r})
        print("TENSORS", len(plan.tensors), plan.totals.state_bytes > 0)
    """, block=("torch", "jax", "jaxlib", "numpy", "transformers"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TENSORS 3 True" in r.stdout


def test_missing_framework_is_one_sentence_naming_the_extra(tmp_path):
    r = _python("""
        import sketchplan
        import sketchplan.optimizers
        from sketchplan.errors import MissingExtra
        for use in (lambda: sketchplan.optimizers.Sketchy, lambda: sketchplan.build_optimizer(None, None)):
            try:
                use()
            except MissingExtra as e:
                assert isinstance(e, ImportError)
                print("MSG", e)
    """, block=("torch",))
    assert r.returncode == 0, r.stderr[-3000:]
    msgs = [line for line in r.stdout.splitlines() if line.startswith("MSG")]
    assert len(msgs) == 2
    assert all("pip install 'sketchplan[torch]'" in m and m.count(".") <= 3 for m in msgs), msgs


def test_plan_and_build_optax_without_torch(tmp_path):
    pytest.importorskip("jax", reason="the jax extra is not installed")
    pytest.importorskip("optax", reason="the jax extra is not installed")
    out = tmp_path / "jax-plan.yaml"
    r = _python(f"""
        from sketchplan.cli import main
        code = main(["plan", "--model", "examples.jax_models:jax_mlp", "--memory-budget", "1GiB",
                     "--out", {str(out)!r}])
        assert code == 0, code
        import jax
        import sketchplan
        from examples.jax_models import init_mlp
        plan = sketchplan.Plan.load({str(out)!r})
        params = init_mlp(jax.random.key(0))
        tx = sketchplan.build_optax(plan, params)
        state = jax.eval_shape(tx.init, params)
        nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCK]
        print("BYTES", nbytes - plan.totals.state_bytes)
    """, block=("torch",))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BYTES 4" in r.stdout  # the plan's state plus the one int32 step counter
