"""The fenced code blocks of README.md and docs/*.md, as tests (``tests/test_docs.py`` runs them).

Every ```` ```bash ````, ```` ```sh ```` and ```` ```python ```` block is a test. HTML comments on the lines right
above a block's fence (invisible on GitHub) say how it runs, one directive per comment:

- ``<!-- docs-test: skip: REASON -->``: not run; the test is reported skipped with REASON (a GPU, the network,
  minutes of installs: say which).
- ``<!-- docs-test: after-previous -->``: the previous runnable block of the same file runs first in the same
  directory (a Python block that loads a plan the bash block above wrote); a Python block after a Python block
  runs in the same interpreter, after it (it uses the names the previous one defined).
- ``<!-- docs-test: setup: COMMAND -->``: a bash command run first (files that stand for the reader's own).
- ``<!-- docs-test: replace: OLD => NEW -->``: the block runs with OLD replaced by NEW (8 GPUs become 2 gloo
  processes on CPU; the reader's ``mypkg`` becomes ``examples.models``). Every OLD must occur in the block.
- ``<!-- docs-test: append: CODE -->``: a line run after the block (call the test function a snippet defines).

Blocks run in a fresh directory holding a link to the repository's ``examples/`` (as if from the repository
root), with ``sketchplan``, ``torchrun`` and ``python`` on ``PATH`` bound to the interpreter running the tests:
bash blocks with ``set -euo pipefail``, Python blocks as a script. Unlabelled blocks (file layouts, diagrams) and
other languages (YAML) are not code and are not collected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str  # bash | python
    code: str
    skip: str | None = None
    after_previous: bool = False
    setup: list[str] = field(default_factory=list)
    replace: list[tuple[str, str]] = field(default_factory=list)
    append: list[str] = field(default_factory=list)
    previous: "Block | None" = None

    @property
    def id(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path.name
        return f"{where}:{self.line}-{self.lang}"

    def runnable_code(self) -> str:
        code = self.code
        for old, new in self.replace:
            if old not in code:
                raise ValueError(f"{self.id}: `replace: {old} => ...` names text the block does not contain")
            code = code.replace(old, new)
        return code + "".join(line + "\n" for line in self.append)


def doc_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def parse(path: Path) -> list[Block]:
    """The runnable blocks of one markdown file, in order, with their directives."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1:j]]
        if lang in RUNNABLE:
            b = Block(path, i + 1, RUNNABLE[lang], "\n".join(body) + "\n")
            k = i - 1
            directives = []
            while k >= 0 and _DIRECTIVE.match(lines[k]):
                directives.insert(0, _DIRECTIVE.match(lines[k]).group(1))
                k -= 1
            for d in directives:
                _apply(b, d)
            if b.after_previous:
                if not blocks:
                    raise ValueError(f"{b.id}: `after-previous` but no runnable block comes before it")
                b.previous = blocks[-1]
            blocks.append(b)
        i = j + 1
    return blocks


def _apply(b: Block, directive: str) -> None:
    key, _, value = directive.partition(":")
    key, value = key.strip(), value.strip()
    if key == "skip":
        if not value:
            raise ValueError(f"{b.id}: `skip:` needs a reason")
        b.skip = value
    elif key == "after-previous":
        b.after_previous = True
    elif key == "setup":
        b.setup.append(value)
    elif key == "replace":
        old, sep, new = value.partition(" => ")
        if not sep or not old:
            raise ValueError(f"{b.id}: write `replace: OLD => NEW`")
        b.replace.append((old, new))
    elif key == "append":
        b.append.append(value)
    else:
        raise ValueError(f"{b.id}: unknown docs-test directive {key!r}")


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in parse(path)]
