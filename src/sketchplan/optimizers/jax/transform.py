"""One optax ``GradientTransformation`` that runs each parameter's method (the JAX ``SketchplanOptimizer``).

State (explicit, a NamedTuple of arrays; works under ``jax.eval_shape``):

- ``tensors``: per parameter key path (``params/Dense_0/kernel``, the names the planner uses), a dict of the
  arrays of its method's layout (``state.init_tensor_state``) — byte for byte what the plan counted;
- ``count``: ONE int32 scalar, the number of steps taken, shared by every tensor. It is the only state outside
  the layouts (4 bytes): torch keeps a Python int per tensor instead, which the plan does not count either.

``update(grads, state, params)`` returns the updates −η(D + λp) (decoupled weight decay, Loshchilov & Hutter
2019), where D is each method's direction (``STEPS``) after grafting and momentum, η the learning rate (a float
or an optax schedule evaluated at ``count``) and λ ``weight_decay`` (``params`` is needed when λ > 0). Frozen
tensors (no method) get zero updates. Everything is traceable: wrap ``update`` in ``jax.jit``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

from ...errors import UserError, require
from ...kernels.jax.support import require_jax
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...pytree import key_path_name
from . import adam, extreme_tensoring, kradagrad, shampoo, sketchy
from . import soap  # issue 19b
from .packing import pack_state, unpack_state
from . import issue19  # issue 19 part A: Adafactor, Lion, Muon, compressed state
from .state import init_tensor_state

jax, jnp = require_jax()

optax = require("optax", "the optax transformations")

#: One step of each method for one parameter: (grad, state dict, step t, cfg, opts) → (direction, new state dict).
STEPS: dict[str, Callable] = {
    "adam": adam.step,
    "shampoo": shampoo.step,
    "blocked_shampoo": shampoo.step,
    "sketchy": sketchy.step,
    "extreme_tensoring": extreme_tensoring.step,
    "kradagrad": kradagrad.step,
    **issue19.STEPS,
}
STEPS["soap"] = soap.step  # issue 19b

#: What a parameter gets: (method config, options) or None for a frozen tensor.
Assignment = Optional[tuple[MethodConfig, OptimizerDefaults]]
Assign = Callable[[str, tuple[int, ...]], Assignment]
LearningRate = Union[float, Callable[[Any], Any], None]


class SketchplanState(NamedTuple):
    """State of ``sketchplan_transform``: the step counter and each parameter's layout arrays (module doc)."""

    count: Any
    tensors: dict


def named_leaves(tree) -> tuple[list[tuple[str, Any]], Any]:
    """(key-path name, leaf) pairs of a pytree in flattening order, and its treedef."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(key_path_name(path), leaf) for path, leaf in leaves], treedef


def sketchplan_transform(assign: Assign, learning_rate: LearningRate = None) -> optax.GradientTransformation:
    """The transformation giving each parameter ``assign(name, shape)`` (module docstring).

    ``learning_rate``: a float or an optax schedule of the step count; None uses each tensor's ``opts.lr``.
    """

    def init(params):
        tensors = {}
        for name, leaf in named_leaves(params)[0]:
            a = assign(name, tuple(leaf.shape))
            if a is not None:
                tensors[name] = init_tensor_state(tuple(int(d) for d in leaf.shape), *a)
        return SketchplanState(jnp.zeros([], jnp.int32), tensors)

    def update(updates, state, params=None):
        named, treedef = named_leaves(updates)
        plist = treedef.flatten_up_to(params) if params is not None else [None] * len(named)
        step = optax.safe_int32_increment(state.count)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        out, tensors = [], {}
        for (name, g), p in zip(named, plist):
            a = assign(name, tuple(g.shape))
            if a is None:
                out.append(jnp.zeros_like(g))
                continue
            if name not in state.tensors:
                raise UserError(f"tensor {name!r} has no optimizer state; initialise the transformation with the "
                                "same parameter tree the updates come from.")
            cfg, opts = a
            old = state.tensors[name]  # packed factors (issue 19b) are squares during the step
            fn = issue19.compressed(STEPS[cfg.method]) if issue19.is_compressed(cfg) else STEPS[cfg.method]
            kw = {"param": p} if cfg.method in issue19.NEEDS_PARAM else {}
            direction, new = fn(g, unpack_state(old, cfg), step, cfg, opts, **kw)
            tensors[name] = pack_state(new, old, cfg, opts, step)
            if opts.weight_decay:
                if p is None:
                    raise ValueError("weight_decay > 0 needs the params: call update(grads, state, params).")
                direction = direction + opts.weight_decay * p.astype(direction.dtype)
            eta = opts.lr if lr is None else lr
            out.append((-eta * direction).astype(g.dtype if p is None else p.dtype))
        return treedef.unflatten(out), SketchplanState(step, tensors)

    return optax.GradientTransformation(init, update)


def uniform_transform(cfg: MethodConfig, opts: OptimizerDefaults,
                      learning_rate: LearningRate = None) -> optax.GradientTransformation:
    """Every parameter gets ``cfg`` with ``opts``."""
    return sketchplan_transform(lambda name, shape: (cfg, opts), learning_rate)
