"""Docs as tests: every bash and Python block of README.md and docs/*.md runs as written (``docs_blocks``).

A README command that fails fails this test, with the block, its exit code and the end of its output. The
summary line "docs as tests: N code blocks executed, M skipped" comes from ``conftest.pytest_terminal_summary``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from docs_blocks import ROOT, Block, all_blocks, parse

BLOCKS = all_blocks()
#: a block that runs longer is a bug in the docs (or needs `skip:` with its reason)
TIMEOUT_S = 300


def _bin(tmp: Path) -> Path:
    """``sketchplan``, ``torchrun`` and ``python`` bound to this interpreter (CI calls ``.venv/bin/python -m
    pytest`` without activating the venv); ``torchrun`` adds ``--standalone``."""
    d = tmp / ".bin"
    d.mkdir()
    # torchrun --standalone: a free rendezvous port, so that two blocks (or another suite on this machine) running
    # at once never meet on torchrun's fixed default port 29500
    for name, argv in (("sketchplan", "-m sketchplan"), ("torchrun", "-m torch.distributed.run --standalone"),
                       ("python", ""), ("python3", "")):
        (d / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {argv} "$@"\n')
        (d / name).chmod(0o755)
    return d


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{_bin(tmp)}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "100"
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _steps(block: Block) -> list[tuple[list[str], str, str]]:
    """(setup commands, language, code) to run for ``block``: its ``after-previous`` chain first; a Python block
    that continues a Python block runs in the same interpreter (it uses the names the previous one defined)."""
    steps = _steps(block.previous) if block.previous is not None else []
    code = block.runnable_code()
    if steps and steps[-1][1] == "python" == block.lang:
        setup, _, prev = steps.pop()
        steps.append((setup + block.setup, "python", prev + code))
    else:
        steps.append((list(block.setup), block.lang, code))
    return steps


def _run(block: Block, cwd: Path, env: dict[str, str]) -> None:
    for setup, lang, code in _steps(block):
        for cmd in setup:
            _check(block, "setup", subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=env,
                                                  capture_output=True, text=True, timeout=TIMEOUT_S), cmd)
        if lang == "bash":
            argv = ["bash", "-euo", "pipefail", "-c", code]
        else:
            script = cwd / f"block_{block.line}.py"
            script.write_text(code)
            argv = [sys.executable, script.name]
        _check(block, "block", subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                              timeout=TIMEOUT_S), code)


def _check(block: Block, what: str, r: subprocess.CompletedProcess, code: str) -> None:
    if r.returncode != 0:
        tail = (r.stdout[-3000:] + "\n--- stderr ---\n" + r.stderr[-4000:]).strip()
        pytest.fail(f"{block.id}: the {what} exited with {r.returncode}\n--- code ---\n{code}\n--- output ---\n{tail}",
                    pytrace=False)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block(block: Block, tmp_path: Path) -> None:
    if block.skip:
        pytest.skip(f"{block.id}: {block.skip}")
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    _run(block, tmp_path, _env(tmp_path))


def test_every_doc_has_its_blocks_collected():
    """The collector finds the README's tour and the fenced blocks of each docs page (a fence it misparses would
    silently drop blocks: count them independently, by their opening fences)."""
    import re

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        fences = re.findall(r"^\s*```(bash|sh|python)\s*$", path.read_text(), flags=re.M)
        assert len(parse(path)) == len(fences), path
    assert any("sketchplan plan --model llama-7b" in b.code for b in BLOCKS)


def test_directives(tmp_path: Path):
    md = tmp_path / "x.md"
    md.write_text("text\n<!-- docs-test: skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```python\nprint(1)\n"
                  "```\n<!-- docs-test: after-previous -->\n<!-- docs-test: replace: 8 => 2 -->\n"
                  "<!-- docs-test: append: print('done') -->\n```python\nprint(8)\n```\n```yaml\na: 1\n```\n")
    a, b, c = parse(md)
    assert (a.skip, a.lang, a.code) == ("needs a GPU", "bash", "nvidia-smi\n")
    assert b.skip is None and b.previous is None
    assert c.previous is b and c.runnable_code() == "print(2)\nprint('done')\n"
    md.write_text("<!-- docs-test: replace: 9 => 2 -->\n```python\nprint(8)\n```\n")
    with pytest.raises(ValueError, match="does not contain"):
        parse(md)[0].runnable_code()
    md.write_text("<!-- docs-test: skp: typo -->\n```python\nprint(8)\n```\n")
    with pytest.raises(ValueError, match="unknown docs-test directive"):
        parse(md)
