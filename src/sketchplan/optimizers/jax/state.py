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


def identities(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> dict[str, float]:
    """Layout names that start as c·I (batched over the block axis), by name → c: ``methods.initial_identity``
    (Shampoo's roots, KrADagrad's L̃₀ = I/ε and roots; as in torch) and SOAP's eigenbases Q = I."""
    out = dict(initial_identity(shape, cfg, opts))
    if cfg.method == "soap":  # as ``optimizers.torch.soap``'s init: the eigenbases start as the identity
        out.update({t.name: 1.0 for t in state_layout(shape, cfg, opts) if ".basis" in t.name})
    return out


def initial_array(t: StateTensor, identity: float | None = None, like=None):
    """The initial value of layout tensor ``t``: c·I per block when ``identity`` is c (a packed factor, shape
    (count, d(d+1)/2), gets the packed c·I), else zeros. ``like`` (an array of ``t``'s shape, e.g. the
    parameter): zeros placed like it (``jnp.zeros_like`` keeps a concrete or explicitly sharded array's
    sharding)."""
    dtype = jax_dtype(t.dtype)
    if identity is not None:
        c = jnp.asarray(identity, dtype)
        if len(t.shape) == 2:  # a packed triangle (count, d(d+1)/2)
            d = side(t.shape[-1])
            return pack(jnp.broadcast_to(jnp.eye(d, dtype=dtype) * c, (t.shape[0], d, d)))
        return jnp.broadcast_to(jnp.eye(t.shape[-1], dtype=dtype) * c, t.shape)
    if like is not None:
        return jnp.zeros_like(like, dtype=dtype)
    return jnp.zeros(t.shape, dtype=dtype)


def allocate(layout: list[StateTensor]) -> dict:
    """Zero arrays with exactly the names, shapes and dtypes of ``layout``."""
    return {t.name: jnp.zeros(t.shape, dtype=jax_dtype(t.dtype)) for t in layout}


def init_tensor_state(shape: tuple[int, ...], cfg: MethodConfig, opts: OptimizerDefaults) -> dict:
    """The state of one parameter as one dict: its method's layout, initialised by ``initial_array``."""
    ids = identities(shape, cfg, opts)
    return {t.name: initial_array(t, ids.get(t.name)) for t in state_layout(shape, cfg, opts)}
