"""The JAX kernels (the twins of ``kernels.torch``): inverse roots, Frequent-Directions updates, the low-rank root
apply, Kronecker-factor products, and their traceable (``jax.jit``/``lax.cond``) forms in ``traced``. Importing
a module here imports jax; ``support.require_jax`` names the extra to install when it is missing."""
