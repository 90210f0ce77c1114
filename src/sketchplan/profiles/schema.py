"""The hardware-profile file: device fingerprint, measured kernel timings, fitted roofline (pydantic, YAML).

A profile holds, per kernel and variant (``kernels.calls.KERNEL_VARIANTS``), the median time of one problem at
each measured size, and the roofline constants fitted from the same measurements (peak matrix-product FLOP/s,
elementwise bandwidth, per-call overhead). ``profiles.cost.CostModel`` turns it into seconds per kernel call.
Files are YAML, loaded with the safe loader; unknown fields and wrong types are rejected naming the field, and so
are quantities out of their physical range (times, FLOP/s and bandwidths finite and positive, within bounds that
keep every prediction finite).
"""

from __future__ import annotations

from typing import ClassVar, Literal
from typing import Annotated

from pydantic import Field

from ..files import StrictModel as _Strict
from ..files import YamlFile
from ..validate import MAX_BYTES, MAX_INT

PROFILE_SCHEMA_VERSION = 1


class DeviceInfo(_Strict):
    """What identifies the device a profile was measured on (the fingerprint ``--hardware auto`` matches)."""

    kind: Literal["cpu", "cuda", "tpu", "other"]
    name: str = Field(description="CPU model or accelerator name")
    memory_bytes: int | None = Field(default=None, ge=0, le=MAX_BYTES)
    driver: str | None = None
    compute_capability: str | None = None
    cores: int | None = Field(default=None, ge=1, le=2**20, description="CPU cores used (threads) or accelerator SMs")
    framework: str = Field(description="torch or jax")
    framework_version: str = ""
    linalg: str | None = Field(default=None, max_length=200, description="the library that ran eigh, SVD and QR, "
                               "with its version (``fingerprint.linalg_backend``): GPU eigh timings change 10-100x "
                               "between versions; not part of the fingerprint ``--hardware auto`` matches")

    def matches(self, other: "DeviceInfo") -> bool:
        """Same device kind, name, core count and framework (memory and driver may differ)."""
        return (self.kind, self.name, self.cores, self.framework) == \
            (other.kind, other.name, other.cores, other.framework)


class Point(_Strict):
    """Median seconds of one problem of size ``dims`` (``reps`` timed repetitions after warm-up)."""

    dims: list[Annotated[int, Field(ge=1, le=MAX_INT)]] = Field(min_length=1, max_length=8)
    seconds: float = Field(gt=0, le=1e6)
    reps: int = Field(default=1, ge=1, le=10**12)


class KernelTable(_Strict):
    kernel: str
    variant: str
    dtype: str = "float32"
    points: list[Point]


class Roofline(_Strict):
    """Analytic time of a problem: max(flops / peak_flops, bytes / bandwidth) + overhead_s."""

    peak_flops: float = Field(ge=1e3, le=1e21, description="FLOP/s of the largest measured matrix product")
    bandwidth: float = Field(ge=1e3, le=1e18, description="bytes/s of the largest measured elementwise pass")
    overhead_s: float = Field(ge=0, le=10, description="time of the smallest measured call")


class ProfileNoise(_Strict):
    """How much a reference problem's time moved while the profile was measured (``profiles.measure.noise``):
    timed before the run, inside it (the grid's own point) and after it. A ratio above ``limit`` means the machine
    was busy and the profile's times are inflated; ``sketchplan profile`` warns and the file says so."""

    kernel: str
    variant: str
    dims: list[Annotated[int, Field(ge=1, le=MAX_INT)]] = Field(min_length=1, max_length=8)
    seconds: list[Annotated[float, Field(gt=0, le=1e6)]] = Field(min_length=2, max_length=8,
                                                                 description="before, [during,] after")
    ratio: float = Field(ge=1, le=1e12, description="slowest over fastest of ``seconds``")
    limit: float = Field(ge=1, le=1e6)
    load_average: list[Annotated[float, Field(ge=0, le=1e6)]] = Field(default_factory=list,
                                                                       description="1-minute load, before and after")
    noisy: bool


class HardwareProfile(YamlFile):
    kind: ClassVar[str] = "hardware profile"
    how_to_make: ClassVar[str] = "measure one with `sketchplan profile --out {path}` or pass --hardware auto"
    how_to_fix: ClassVar[str] = "measure it again with `sketchplan profile`"

    schema_version: Literal[1] = PROFILE_SCHEMA_VERSION
    name: str
    created_by: str = ""
    measured: bool = Field(default=True, description="False for the analytic fallback (no measurements)")
    quick: bool = False
    device: DeviceInfo
    roofline: Roofline
    tables: list[KernelTable] = Field(default_factory=list)
    noise: list[ProfileNoise] | None = Field(default=None, description="reference problems timed before, during "
                                             "and after the measurement (absent in profiles made before issue 18)")

    def table(self, kernel: str, variant: str) -> KernelTable | None:
        for t in self.tables:
            if t.kernel == kernel and t.variant == variant:
                return t
        return None

