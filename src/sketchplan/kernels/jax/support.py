"""Lazy access to JAX for the JAX kernels: ``import sketchplan`` never imports jax, and using a JAX kernel without
jax installed says which extra to install."""

from __future__ import annotations

from ...errors import require


def require_jax():
    """(jax, jax.numpy), or a ``MissingExtra`` (an ImportError) naming the extra to install."""
    jax = require("jax", "the JAX kernels and optax transformations")
    return jax, require("jax.numpy", "the JAX kernels and optax transformations")
