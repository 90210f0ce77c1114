"""JAX steps of issue 19's methods (Adafactor, Lion, Muon) and of compressed state, the twins of
``optimizers.torch.adafactor``, ``.lion``, ``.muon`` and ``.compressed`` (math, layouts, workspace and kernel calls:
``methods.adafactor``, ``methods.lion``, ``methods.muon``, ``methods.compression``).

Each ``step(grad, state, t, cfg, opts, param=None)`` returns (direction, new state) as the other methods' steps;
``transform.sketchplan_transform`` applies −η(D + λp) (constructors: ``issue19_constructors``). Adafactor's relative step size needs the parameter, so the
transformation passes ``param`` to the methods in ``NEEDS_PARAM``. ``compressed(step)`` wraps any method's step:
decode the stored moments, run the step on the plain configuration, encode them back (so the state arrays are
exactly ``methods.state_layout``'s, uint8 codes and float32 block maxima included).
"""

from __future__ import annotations

from ...kernels.jax.support import require_jax
from ...methods import plain_layout
from ...methods.adafactor import BETA2_DECAY, CLIP, EPS2, factored
from ...methods.compression import BLOCK, SECOND_MOMENTS, coded, dynamic_code, is_compressed, plain_config
from ...methods.layout import MethodConfig, OptimizerDefaults
from ...kernels.jax.newton_schulz import newton_schulz
from ...methods.muon import adam_config, matrix_view, update_scale
from . import adam as jax_adam
from .common import apply_momentum, lerp, sanitize

jax, jnp = require_jax()

#: Methods whose step needs the parameter itself.
NEEDS_PARAM = ("adafactor",)


def lion_step(grad, state, step, cfg: MethodConfig, opts: OptimizerDefaults, param=None):
    st = dict(state)
    beta1, beta2 = opts.lion_betas
    g = sanitize(st, grad).astype(jnp.dtype(opts.state_dtype))
    m = st.get("momentum")
    if m is None:
        d = jnp.sign(g)
    else:
        mf = m.astype(g.dtype)
        d = jnp.sign(lerp(mf, g, 1 - beta1))
        st["momentum"] = lerp(mf, g, 1 - beta2).astype(m.dtype)
    return d * opts.lion_lr_ratio, st


def adafactor_step(grad, state, step, cfg: MethodConfig, opts: OptimizerDefaults, param=None):
    if param is None:
        raise ValueError("adafactor's relative step size needs the params: call update(grads, state, params).")
    st = dict(state)
    dtype = jnp.dtype(opts.state_dtype)
    g = sanitize(st, grad).astype(dtype)
    t = step.astype(jnp.float32)
    eps1 = jnp.finfo(dtype).eps
    w = t**BETA2_DECAY
    rho = jnp.minimum(opts.lr, 1 / jnp.sqrt(t))
    p = param.astype(jnp.float32)
    alpha = jnp.maximum(EPS2, jnp.sqrt(jnp.mean(p * p))) * rho
    if factored(tuple(grad.shape)):
        row = st["row_var"] + w * (jnp.mean(g * g, axis=-1, keepdims=True) - st["row_var"])
        col = st["col_var"] + w * (jnp.mean(g * g, axis=-2, keepdims=True) - st["col_var"])
        st["row_var"], st["col_var"] = row, col
        v = (row @ col) / jnp.maximum(jnp.mean(row, axis=-2, keepdims=True), eps1)
    else:
        v = st["variance"] + w * (g * g - st["variance"])
        st["variance"] = v
    u = jax.lax.rsqrt(jnp.maximum(v, eps1 * eps1)) * g
    denom = jnp.maximum(1.0, jnp.sqrt(jnp.mean(u * u)) / CLIP)
    u = u * (alpha / (denom * opts.lr))
    return apply_momentum(st, u, opts.betas[0], False), st


def muon_step(grad, state, step, cfg: MethodConfig, opts: OptimizerDefaults, param=None):
    view = matrix_view(tuple(grad.shape), cfg.batch_dims)
    if view is None:
        return jax_adam.step(grad, state, step, adam_config(cfg), opts)
    st = dict(state)
    batch, m, n = view
    g = sanitize(st, grad).astype(jnp.dtype(opts.state_dtype))
    u = apply_momentum(st, g, opts.muon_momentum, True) if "momentum" in st else g
    o = newton_schulz(u.reshape(batch, m, n), opts.ns_steps).reshape(grad.shape)
    return o * update_scale(m, n), st


STEPS = {"adafactor": adafactor_step, "lion": lion_step, "muon": muon_step}


# ---- compressed state ----

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
