"""Which profile a plan uses: ``--hardware auto|NAME|FILE``.

- ``auto``: the fingerprint of this machine's default device (CUDA when torch sees one, else the CPU) is
  matched against the profiles shipped in ``profiles/data/*.yaml`` (same kind, name, core count, framework);
  a shipped profile of the same device at another thread count is scaled by a calibration measured here
  (``profiles.calibrate``, cached); without either, the analytic roofline fallback for that device
  (``analytic_profile``), flagged as such.
- ``NAME``: a shipped profile by name (``sketchplan profile`` names them after the fingerprint).
- ``FILE``: a profile YAML written by ``sketchplan profile --out FILE``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from ..errors import UserError
from .fingerprint import host_info, profile_name
from .schema import DeviceInfo, HardwareProfile, Roofline

DATA_DIR = Path(__file__).parent / "data"


@lru_cache(maxsize=None)
def shipped_profiles() -> tuple[HardwareProfile, ...]:
    """The profiles that ship with the package (measured on real devices)."""
    return tuple(HardwareProfile.load(p) for p in sorted(DATA_DIR.glob("*.yaml")))


def analytic_profile(info: DeviceInfo) -> HardwareProfile:
    """Roofline-only profile for a device nothing was measured on: rough FLOP/s, bandwidth and call overhead
    per device kind (CPU: 30 GFLOP/s and 8 GB/s per core, capped at 60 GB/s; GPU: 50 TFLOP/s, 1.5 TB/s)."""
    if info.kind == "cpu":
        cores = info.cores or os.cpu_count() or 1
        roof = Roofline(peak_flops=30e9 * cores, bandwidth=min(8e9 * cores, 60e9), overhead_s=5e-6)
    else:
        roof = Roofline(peak_flops=50e12, bandwidth=1.5e12, overhead_s=10e-6)
    return HardwareProfile(name=f"analytic-{profile_name(info)}", created_by="sketchplan analytic fallback",
                           measured=False, device=info, roofline=roof)


def resolve(hardware: str | os.PathLike | HardwareProfile | None) -> HardwareProfile | None:
    """The profile ``hardware`` names (module docstring); None stays None (no timing)."""
    if hardware is None or isinstance(hardware, HardwareProfile):
        return hardware
    text = str(hardware)
    if text == "auto":
        info = host_info()
        for p in shipped_profiles():
            if p.device.matches(info):
                return p
        for p in shipped_profiles():
            d = p.device
            if (d.kind, d.name, d.framework) == (info.kind, info.name, info.framework) and d.kind == "cpu":
                from .calibrate import calibrate

                scaled = calibrate(p, info)
                if scaled is not None:
                    return scaled
        return analytic_profile(info)
    for p in shipped_profiles():
        if p.name == text:
            return p
    if Path(text).suffix in (".yaml", ".yml") or os.sep in text or Path(text).exists():
        return HardwareProfile.load(text)
    names = ", ".join(p.name for p in shipped_profiles()) or "none shipped"
    raise UserError(f"--hardware {text!r} is neither auto, a shipped profile ({names}) nor a profile file; "
                    "measure one with `sketchplan profile --out FILE`.")


def label(profile: HardwareProfile) -> str:
    """How a plan records its profile: the name, marked when it is the analytic fallback."""
    if not profile.measured:
        return f"{profile.name} (analytic fallback, not measured)"
    if "-scaled-" in profile.name:
        return f"{profile.name} ({profile.created_by})"
    return profile.name
