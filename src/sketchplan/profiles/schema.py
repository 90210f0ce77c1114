"""The hardware-profile file: device fingerprint, measured kernel timings, fitted roofline (pydantic, YAML).

A profile holds, per kernel and variant (``kernels.calls.KERNEL_VARIANTS``), the median time of one problem at
each measured size, and the roofline constants fitted from the same measurements (peak matrix-product FLOP/s,
elementwise bandwidth, per-call overhead). ``profiles.cost.CostModel`` turns it into seconds per kernel call.
Files are YAML, loaded with the safe loader; unknown fields and wrong types are rejected naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UserError

PROFILE_SCHEMA_VERSION = 1
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceInfo(_Strict):
    """What identifies the device a profile was measured on (the fingerprint ``--hardware auto`` matches)."""

    kind: Literal["cpu", "cuda", "tpu", "other"]
    name: str = Field(description="CPU model or accelerator name")
    memory_bytes: int | None = None
    driver: str | None = None
    compute_capability: str | None = None
    cores: int | None = Field(default=None, description="CPU cores used (threads) or accelerator SMs")
    framework: str = Field(description="torch or jax")
    framework_version: str = ""

    def matches(self, other: "DeviceInfo") -> bool:
        """Same device kind, name, core count and framework (memory and driver may differ)."""
        return (self.kind, self.name, self.cores, self.framework) == \
            (other.kind, other.name, other.cores, other.framework)


class Point(_Strict):
    """Median seconds of one problem of size ``dims`` (``reps`` timed repetitions after warm-up)."""

    dims: list[int]
    seconds: float = Field(gt=0)
    reps: int = 1


class KernelTable(_Strict):
    kernel: str
    variant: str
    dtype: str = "float32"
    points: list[Point]


class Roofline(_Strict):
    """Analytic time of a problem: max(flops / peak_flops, bytes / bandwidth) + overhead_s."""

    peak_flops: float = Field(gt=0, description="FLOP/s of the largest measured matrix product")
    bandwidth: float = Field(gt=0, description="bytes/s of the largest measured elementwise pass")
    overhead_s: float = Field(ge=0, description="time of the smallest measured call")


class HardwareProfile(_Strict):
    schema_version: Literal[1] = PROFILE_SCHEMA_VERSION
    name: str
    created_by: str = ""
    measured: bool = Field(default=True, description="False for the analytic fallback (no measurements)")
    quick: bool = False
    device: DeviceInfo
    roofline: Roofline
    tables: list[KernelTable] = Field(default_factory=list)

    def table(self, kernel: str, variant: str) -> KernelTable | None:
        for t in self.tables:
            if t.kernel == kernel and t.variant == variant:
                return t
        return None

    def to_yaml(self) -> str:
        return yaml.dump(self.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, width=120)

    def save(self, path: str | os.PathLike) -> Path:
        from ..planner.plan import write_atomic

        return write_atomic(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HardwareProfile":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"hardware profile {str(p)!r} does not exist; measure one with "
                            f"`sketchplan profile --out {p}` or pass --hardware auto.")
        try:
            data = yaml.load(p.read_text(), Loader=_Loader)
        except yaml.YAMLError:
            raise UserError(f"hardware profile {str(p)!r} is not valid YAML; measure it again with "
                            "`sketchplan profile`.") from None
        if not isinstance(data, dict):
            raise UserError(f"{str(p)!r} does not hold a hardware profile (expected a mapping); measure one with "
                            "`sketchplan profile`.")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            raise UserError(f"hardware profile {str(p)!r}: field {loc!r} is invalid ({msg}); measure it again "
                            "with `sketchplan profile`.") from None
