"""The files sketchplan writes and reads (plans, hardware profiles, spectra): strict pydantic schemas stored as
YAML with safe loading only, written atomically.

``YamlFile`` subclasses name what they are and how a user makes one again, so every bad file is refused with
one sentence naming the file, the field and the fix. Reading goes through ``inputs`` (size, depth and alias
limits), writing through ``outputs`` (checked targets, atomic and durable); every float field of every schema
must be finite (``allow_inf_nan=False``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError

# libyaml's safe dumper/loader when available (10x faster on large plans), else the pure-Python safe ones.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class StrictModel(BaseModel):
    """A schema that rejects unknown fields."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class YamlFile(StrictModel):
    """A strict schema stored as a YAML file. Subclasses set ``kind`` ("plan file"), ``how_to_make``
    (a sentence fragment with ``{path}``) and ``how_to_fix``."""

    kind: ClassVar[str] = "file"
    how_to_make: ClassVar[str] = "check the path"
    how_to_fix: ClassVar[str] = "write it again"

    def to_yaml(self) -> str:
        return yaml.dump(self.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, width=120)

    def save(self, path: str | os.PathLike, label: str = "output") -> Path:
        return write_atomic(path, self.to_yaml(), label)

    @classmethod
    def load(cls, path: str | os.PathLike):
        from .inputs import load_yaml, read_text

        p = Path(path)
        where = f"{cls.kind} {str(p)!r}"
        text = read_text(p, cls.kind, cls.how_to_make.format(path=p), cls.how_to_fix)
        data = load_yaml(text, where, cls.how_to_fix)  # safe loader with limits: never constructs objects
        return cls.from_data(data, where)

    @classmethod
    def from_data(cls, data: object, where: str | None = None):
        where = where or cls.kind
        if not isinstance(data, dict):
            raise UserError(f"{where} does not hold a {cls.kind.split()[0]} (expected a mapping at the top level); "
                            f"{cls.how_to_fix}.")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            from .validate import pydantic_message

            raise UserError(f"{pydantic_message(exc, where)}; fix that field or {cls.how_to_fix}.") from None
        except RecursionError:
            raise UserError(f"{where} nests too deeply; {cls.how_to_fix}.") from None


def write_atomic(path: str | os.PathLike, text: str | bytes, label: str = "output") -> Path:
    """Write ``text`` to ``path`` atomically and durably; see ``outputs`` for the rules (symlinks, permissions,
    refused targets, clean-up on every failure)."""
    from .outputs import write_atomic as _write

    return _write(path, text, label)
