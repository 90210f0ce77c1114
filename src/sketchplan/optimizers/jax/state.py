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
from .packing import pack, side

jax, jnp = require_jax()


def jax_dtype(name: str):
    """The JAX dtype of a layout dtype name such as ``"bfloat16"``."""
    return jnp.dtype(name)


def allocate(layout: list[StateTensor]) -> dict:
    """Zero arrays with exactly the names, shapes and dtypes of ``layout``."""
    return {t.name: jnp.zeros(t.shape, dtype=jax_dtype(t.dtype)) for t in layout}


def init_tensor_state(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> dict:
    """The state of one parameter: its method's layout, zero, except the tensors that start as c·I
    (``methods.initial_identity``: Shampoo's roots, KrADagrad's L̃₀ = I/ε and roots; as in torch; a packed factor
    gets the packed c·I) and SOAP's eigenbases Q = I."""
    state = allocate(state_layout(shape, cfg, opts))
    for name, c in initial_identity(shape, cfg, opts).items():
        t = state[name]
        if t.ndim == 2:  # issue 19b: a packed triangle (count, d(d+1)/2)
            d = side(t.shape[-1])
            state[name] = pack(jnp.broadcast_to(jnp.eye(d, dtype=t.dtype) * jnp.asarray(c, t.dtype), (t.shape[0], d, d)))
            continue
        state[name] = jnp.broadcast_to(jnp.eye(t.shape[-1], dtype=t.dtype) * jnp.asarray(c, t.dtype), t.shape)
    if cfg.method == "soap":  # issue 19b: the eigenbases start as the identity
        for name, t in state.items():
            if ".basis" in name:
                state[name] = jnp.broadcast_to(jnp.eye(t.shape[-1], dtype=t.dtype), t.shape)
    return state
