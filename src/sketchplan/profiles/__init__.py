"""Hardware profiles: device fingerprint, measured kernel timings and the fitted cost model.

``measure.measure_profile`` runs the micro-benchmarks (``sketchplan profile``); ``schema.HardwareProfile`` is
the file; ``cost.CostModel`` maps the optimizers' kernel calls to seconds; ``registry.resolve`` picks the
profile for ``--hardware auto|NAME|FILE``.
"""

from .cost import CostModel, Estimate
from .registry import analytic_profile, label, resolve, shipped_profiles
from .schema import DeviceInfo, HardwareProfile, KernelTable, Point, Roofline

__all__ = ["CostModel", "DeviceInfo", "Estimate", "HardwareProfile", "KernelTable", "Point", "Roofline",
           "analytic_profile", "label", "resolve", "shipped_profiles"]
