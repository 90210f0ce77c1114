"""The files sketchplan writes and reads (plans, hardware profiles, spectra): strict pydantic schemas stored as
YAML with safe loading only, written atomically.

``YamlFile`` subclasses name what they are and how a user makes one again, so every bad file is refused with
one sentence naming the file, the field and the fix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError

# libyaml's safe dumper/loader when available (10x faster on large plans), else the pure-Python safe ones.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictModel(BaseModel):
    """A schema that rejects unknown fields."""

    model_config = ConfigDict(extra="forbid")


class YamlFile(StrictModel):
    """A strict schema stored as a YAML file. Subclasses set ``kind`` ("plan file"), ``how_to_make``
    (a sentence fragment with ``{path}``) and ``how_to_fix``."""

    kind: ClassVar[str] = "file"
    how_to_make: ClassVar[str] = "check the path"
    how_to_fix: ClassVar[str] = "write it again"

    def to_yaml(self) -> str:
        return yaml.dump(self.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, width=120)

    def save(self, path: str | os.PathLike) -> Path:
        return write_atomic(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | os.PathLike):
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{cls.kind} {str(p)!r} does not exist; {cls.how_to_make.format(path=p)}.")
        try:
            data = yaml.load(p.read_text(), Loader=_Loader)  # safe loader: never constructs objects
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{cls.kind} {str(p)!r} is not valid YAML ({first}); {cls.how_to_fix}.") from None
        return cls.from_data(data, f"{cls.kind} {str(p)!r}")

    @classmethod
    def from_data(cls, data: object, where: str | None = None):
        where = where or cls.kind
        if not isinstance(data, dict):
            raise UserError(f"{where} does not hold a {cls.kind.split()[0]} (expected a mapping at the top level); "
                            f"{cls.how_to_fix}.")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            raise UserError(f"{where}: field {loc!r} is invalid ({msg}); fix that field or {cls.how_to_fix}.") \
                from None


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; a missing parent directory is a user error."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {str(p)!r}: directory {str(parent)!r} does not exist; create it or choose "
                        "another --out path.")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p
