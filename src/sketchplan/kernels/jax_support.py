"""Lazy access to JAX for the ``jax_*`` kernel modules: ``import sketchplan`` never imports jax, and using a JAX
kernel without jax installed says how to install it."""

from __future__ import annotations


def require_jax():
    """(jax, jax.numpy), or an ImportError naming the extra to install."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        raise ImportError("the JAX kernels need jax: pip install 'sketchplan[jax]'") from None
    return jax, jnp
