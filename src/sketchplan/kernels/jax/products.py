"""JAX matrix products of the Kronecker-factored methods (the torch optimizers inline the same ``bmm`` calls):

- ``gram_update``: Shampoo's statistic S ← decay·S + weight·X Xᵀ for the mode unfoldings X (b, d, n);
- ``factor_apply``: the mode product P X (b, d, d) @ (b, d, m) that applies a root.

Both are jit-compiled and batched over the blocks of a group.
"""

from __future__ import annotations

from functools import partial

from .support import require_jax

jax, jnp = require_jax()


@partial(jax.jit, static_argnames=("decay", "weight"))
def gram_update(stat, x, decay: float, weight: float):
    """decay · S + weight · X Xᵀ, batched: stat (b, d, d), x (b, d, n)."""
    return decay * stat + weight * (x @ jnp.swapaxes(x, -1, -2))


@jax.jit
def factor_apply(root, x):
    """P X, batched: root (b, d, d), x (b, d, m)."""
    return root @ x
