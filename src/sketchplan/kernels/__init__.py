"""Numerical kernels the optimizers run: inverse roots (eigh, coupled Newton), Frequent-Directions sketch
updates, low-rank inverse-root applies. All are plain torch functions batched over a leading block dimension.
"""

from .frequent_directions import FD_VARIANTS, choose_variant, fd_update
from .lowrank import lowrank_root_apply
from .roots import inverse_root_newton, safe_eigh, symmetric_power

__all__ = ["FD_VARIANTS", "choose_variant", "fd_update", "inverse_root_newton", "lowrank_root_apply",
           "safe_eigh", "symmetric_power"]
