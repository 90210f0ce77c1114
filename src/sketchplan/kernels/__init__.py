"""Kernels: the linear-algebra work the optimizers' steps consist of.

- ``calls``: the framework-free catalogue (kernel names, variants, flop and byte counts, ``KernelCall``) that the
  method descriptions (``sketchplan.methods``) declare and the hardware profiles time;
- ``torch/``: the torch kernels (inverse roots with fallbacks, Frequent-Directions updates, low-rank root apply);
- ``jax/``: the same kernels in JAX;
- ``timing``: the timing harness the profiler uses.

Importing this package imports neither torch nor jax.
"""

from .calls import EXACT_FD_VARIANTS, FD_VARIANTS, KERNEL_VARIANTS, VARIANT_OPTIONS, KernelCall, choose_variant

__all__ = ["EXACT_FD_VARIANTS", "FD_VARIANTS", "KERNEL_VARIANTS", "KernelCall", "VARIANT_OPTIONS", "choose_variant"]
