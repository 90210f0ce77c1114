"""Compressed optimizer state in JAX (bfloat16 or 8-bit blockwise moments), the twin of
``optimizers.torch.compressed`` (codes, block size and layouts: ``methods.compression``).

``compressed(step)`` wraps any method's step: decode the stored moments, run the step on the plain configuration,
encode them back, so the state arrays are exactly ``methods.state_layout``'s (uint8 codes and float32 block
maxima included). int8 (Dettmers et al. 2022's dynamic code, one float32 absmax per ``BLOCK`` elements): a value
x of block b is stored as the index of the nearest code point of x / absmax_b.
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods import plain_layout
from ...methods.compression import BLOCK, SECOND_MOMENTS, coded, dynamic_code, is_compressed, plain_config
from ...methods.layout import MethodConfig, OptimizerDefaults

jax, jnp = require_jax()

__all__ = ["compressed", "decode", "encode", "is_compressed"]


def decode(q, absmax, signed: bool, dtype):
    code = jnp.asarray(dynamic_code(signed), jnp.float32)
    n = q.size
    vals = code[q.reshape(-1).astype(jnp.int32)]
    pad = absmax.size * BLOCK - n
    scale = jnp.repeat(absmax, BLOCK)[:n] if pad else jnp.repeat(absmax, BLOCK)
    return (vals * scale).reshape(q.shape).astype(dtype)


def encode(x, shape_q, signed: bool):
    """(uint8 codes, float32 block maxima) of x (``optimizers.torch.compressed.encode``)."""
    code = jnp.asarray(dynamic_code(signed), jnp.float32)
    mids = (code[1:] + code[:-1]) / 2
    flat = x.reshape(-1).astype(jnp.float32)
    n = flat.size
    nb = -(-n // BLOCK)
    padded = jnp.pad(flat, (0, nb * BLOCK - n)).reshape(nb, BLOCK)
    absmax = jnp.max(jnp.abs(padded), axis=1)
    normed = padded / jnp.maximum(absmax, jnp.finfo(jnp.float32).tiny)[:, None]
    q = jnp.searchsorted(mids, normed.reshape(-1)[:n], side="left").astype(jnp.uint8)
    return q.reshape(shape_q), absmax


def compressed(step_fn):
    """``step_fn`` run on decoded moments (module docstring)."""

    def run(grad, state, step, cfg: MethodConfig, opts: OptimizerDefaults, **kw):
        plain = plain_layout(tuple(grad.shape), cfg, opts)
        st = dict(state)
        items = coded(plain, cfg)
        for t, codec in items:
            if codec == "int8":
                st[t.name] = decode(st[t.name], st[t.name + ".absmax"], t.name not in SECOND_MOMENTS,
                                    jnp.dtype(t.dtype))
            else:
                st[t.name] = st[t.name].astype(jnp.dtype(t.dtype))
        direction, st = step_fn(grad, st, step, plain_config(cfg), opts, **kw)
        st = dict(st)
        for t, codec in items:
            if codec == "int8":
                st[t.name], st[t.name + ".absmax"] = encode(st[t.name], t.shape, t.name not in SECOND_MOMENTS)
            else:
                st[t.name] = st[t.name].astype(jnp.bfloat16)
        return direction, st

    return run
