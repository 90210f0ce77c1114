"""Allocating JAX optimizer state from a layout (``layout.StateTensor`` lists are the one source of truth).

The torch optimizers allocate ``state.allocate(layout)``; the optax transformations allocate the same list here,
as zero ``jnp`` arrays of exactly the names, shapes and dtypes the planner counts, so
``sum(x.nbytes for x in jax.tree.leaves(state))`` is the plan's state bytes (plus the transformation's one
int32 step counter, ``transform.SketchplanState.count``). ``jnp.zeros`` works under ``jax.eval_shape``, so the
state's size is known without allocating it.
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods import initial_identity, state_layout
from ...methods.layout import MethodConfig, OptimizerDefaults, StateTensor

jax, jnp = require_jax()


def jax_dtype(name: str):
    """The JAX dtype of a layout dtype name such as ``"bfloat16"``."""
    return jnp.dtype(name)


def initial_array(t: StateTensor, cfg: MethodConfig, opts: OptimizerDefaults, like=None,
                  identity: float | None = None):
    """The initial value of layout tensor ``t``: zeros, or c·I per block when ``identity`` is c (the value
    ``methods.initial_identity`` gives ``t``'s name: Shampoo's roots, KrADagrad's L̃₀ = I/ε and roots, as in
    torch). ``like`` (an array of ``t``'s shape, e.g. the parameter): zeros placed like it (``jnp.zeros_like``
    keeps a concrete or explicitly sharded array's sharding)."""
    dtype = jax_dtype(t.dtype)
    if identity is not None:
        return jnp.broadcast_to(jnp.eye(t.shape[-1], dtype=dtype) * jnp.asarray(identity, dtype), t.shape)
    if like is not None:
        return jnp.zeros_like(like, dtype=dtype)
    return jnp.zeros(t.shape, dtype=dtype)


def allocate(layout: list[StateTensor]) -> dict:
    """Zero arrays with exactly the names, shapes and dtypes of ``layout``."""
    return {t.name: jnp.zeros(t.shape, dtype=jax_dtype(t.dtype)) for t in layout}


def init_tensor_state(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> dict:
    """The state of one parameter as one dict: its method's layout, initialised by ``initial_array`` (zeros, and
    c·I where ``methods.initial_identity`` says so, as in torch)."""
    ident = initial_identity(shape, cfg, opts)
    return {t.name: initial_array(t, cfg, opts, identity=ident.get(t.name)) for t in state_layout(shape, cfg, opts)}
