"""The torch kernels: inverse roots (eigh with a float64 retry, coupled Newton), Frequent-Directions updates
(four variants) and the low-rank-plus-ridge root apply, all batched over a leading block dimension."""

from .frequent_directions import FD_VARIANTS, choose_variant, fd_update
from .lowrank import lowrank_root_apply
from .roots import inverse_root_newton, safe_eigh, symmetric_power

__all__ = ["FD_VARIANTS", "choose_variant", "fd_update", "inverse_root_newton", "lowrank_root_apply", "safe_eigh",
           "symmetric_power"]
