"""The methods as optax transformations (the JAX twins of ``Adam``, ``Shampoo``, ``BlockedShampoo``, ``Sketchy``,
``ExtremeTensoring``, ``KrADagrad``, ``SOAP``, ``Adafactor``, ``Lion`` and ``Muon``; same options and defaults,
same directions).

Two forms, as optax has them (``optax.scale_by_adam`` / ``optax.adamw``):

- **direction only**: ``scale_by_adam``, ``scale_by_shampoo``, ``scale_by_blocked_shampoo``, ``scale_by_sketchy``,
  ``scale_by_extreme_tensoring``, ``scale_by_kradagrad``, ``scale_by_soap``, ``scale_by_adafactor``,
  ``scale_by_lion``, ``scale_by_muon`` return the method's direction D for every parameter
  (``transform.scale_by_assignment``), to compose with ``optax.chain`` (``optax.add_decayed_weights``,
  ``optax.scale_by_learning_rate`` / ``scale_by_schedule``, clipping, ...);
- **aliases** ``adam``, ``shampoo``, ``blocked_shampoo``, ``sketchy``, ``extreme_tensoring``, ``kradagrad``,
  ``soap``, ``adafactor``, ``lion``, ``muon``:
  ``optax.chain(scale_by_X(...), optax.add_decayed_weights(weight_decay, mask), optax.scale_by_learning_rate(
  learning_rate))``, i.e. updates −η(D + λp). ``learning_rate`` is a float, an array or an optax schedule;
  ``weight_decay`` (None or 0: none, and ``update`` needs no params) takes optax's ``mask`` (a tree of booleans or
  a function of the params, e.g. to spare biases and norms).

Every other keyword is an ``OptimizerDefaults`` field (``betas``, ``eps``, ``shampoo_eps``,
``precondition_frequency``, ``stats_every``, ``start_preconditioning_step``, ``merge_dims``, ``max_precond_dim``,
``state_dtype``, ``nesterov``, ``root_method``, ``fd_variant``, ``et_max_dim``, ``lion_betas``, ``lion_lr_ratio``,
``muon_momentum``, ``ns_steps``, ...), and ``compress`` (``none``, ``bfloat16``, ``int8``: the second moments'
storage, ``methods.compression``) and ``packed`` (symmetric factors as packed triangles, ``methods.packing``) are
``MethodConfig`` fields every transformation takes; the signatures list each of them
explicitly with a default of None (the field's default), so ``optax.inject_hyperparams(adam)(learning_rate=...)``
binds them. Only ``learning_rate`` and ``weight_decay`` can be injected (traced); an injected structural option
(a rank, a block size, ε, β) must be named in ``static_args``, and a traced one is refused naming it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

from ...errors import UserError, require
from ...kernels.jax.support import require_jax
from ...methods.layout import MethodConfig, OptimizerDefaults
from .transform import scale_by_uniform

jax, jnp = require_jax()
optax = require("optax", "the optax transformations")

#: ``OptimizerDefaults`` fields a transformation takes as keywords (lr and weight decay are chained on).
OPTION_FIELDS = tuple(f for f in OptimizerDefaults.model_fields if f not in ("lr", "weight_decay"))
#: ``MethodConfig`` fields every transformation takes as keywords (the storage of its state).
CONFIG_FIELDS = ("compress", "packed")
_TUPLE_FIELDS = {f for f, info in OptimizerDefaults.model_fields.items() if isinstance(info.default, tuple)}
_INT_FIELDS = {f for f, info in OptimizerDefaults.model_fields.items() if info.annotation is int}


def _static(name: str, value):
    """A Python value for a structural option given as a concrete array (``inject_hyperparams`` turns numbers
    into arrays); a traced one cannot shape the state."""
    if isinstance(value, jax.core.Tracer):
        raise UserError(f"option {name!r} sets the optimizer's structure and cannot be traced; pass it to "
                        f"optax.inject_hyperparams(..., static_args=({name!r},)).")
    if isinstance(value, (jax.Array,)) or type(value).__module__ == "numpy":
        value = value.item()
    return value


def _concrete_number(value) -> Optional[float]:
    """``value`` as a float when it is a number or a concrete scalar array, else None (a schedule, a tracer)."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and value.ndim == 0:
        return float(value)
    return None


def _options(cfg_fields: dict, options: dict, defaults: dict | None = None) -> tuple[dict, OptimizerDefaults]:
    """(MethodConfig keywords, OptimizerDefaults) from keywords, dropping Nones (the field's default)."""
    given = {**(defaults or {}), **{k: _static(k, v) for k, v in options.items() if v is not None}}
    for k in _TUPLE_FIELDS:
        if k in given:
            given[k] = tuple(_static(k, b) for b in given[k])
    for k in _INT_FIELDS & given.keys():
        if isinstance(given[k], float) and given[k].is_integer():
            given[k] = int(given[k])
    cfg = {k: _static(k, v) for k, v in cfg_fields.items() if v is not None}
    for k in ("rank", "block_size"):
        if isinstance(cfg.get(k), float) and cfg[k].is_integer():
            cfg[k] = int(cfg[k])
    return cfg, OptimizerDefaults(**given)


def _explicit_options(fn: Callable) -> Callable:
    """Give ``fn(..., **options)`` a signature listing every ``OPTION_FIELDS`` keyword (default None), so
    ``inspect.signature`` — and with it ``optax.inject_hyperparams`` — sees names, not ``**options``."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in params}
    params += [inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY, default=None)
               for f in CONFIG_FIELDS + OPTION_FIELDS if f not in taken]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        unknown = set(kwargs) - {p.name for p in params}
        if unknown:
            raise TypeError(f"{fn.__name__}() got unexpected keyword(s) {sorted(unknown)}")
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    return wrapper


def _direction(method: str, defaults: dict | None = None, **fields):
    def make(**options):
        cfg_fields = {**fields, **{k: options.pop(k) for k in CONFIG_FIELDS if k in options}}
        cfg, opts = _options(cfg_fields, options, defaults)
        return scale_by_uniform(MethodConfig(method=method, **cfg), opts)
    return make


def with_learning_rate(direction: optax.GradientTransformation, learning_rate, weight_decay=None,
                       mask: Optional[Any] = None) -> optax.GradientTransformation:
    """``direction``, then decoupled weight decay λp (optionally masked), then −η (η float, array or schedule)."""
    parts = [direction]
    if isinstance(weight_decay, (int, float)) and weight_decay < 0:
        raise UserError(f"weight_decay must be ≥ 0, got {weight_decay}.")
    if weight_decay is not None and not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    if learning_rate is None:
        raise UserError("learning_rate is required (a float or an optax schedule).")
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


# ---- direction only ----

@_explicit_options
def scale_by_adam(momentum: str = "float32", **options):
    """Adam's direction (Kingma & Ba 2015): D = m̂ / (√v̂ + ε); ``momentum`` is m's dtype (``float32``,
    ``bfloat16``) or ``none`` (RMSProp with bias correction)."""
    return _direction("adam", momentum=momentum)(**options)


@_explicit_options
def scale_by_shampoo(block_size: Optional[int] = None, graft: str = "adam", momentum: str = "float32", **options):
    """Shampoo's direction (Gupta, Koren & Singer 2018; Anil et al. 2020): D = G ×_1 (S_1 + εI)^(−1/(2k)) …,
    norm-grafted; ``block_size`` B gives blocked Shampoo."""
    method = "shampoo" if block_size is None else "blocked_shampoo"
    return _direction(method, block_size=block_size, graft=graft, momentum=momentum)(**options)


@_explicit_options
def scale_by_blocked_shampoo(block_size: Optional[int] = None, graft: str = "adam", momentum: str = "float32",
                             **options):
    """Blocked Shampoo's direction (Anil et al. 2020): Shampoo on blocks of at most ``block_size`` (default 1024)
    along every dimension."""
    return scale_by_shampoo(block_size=1024 if block_size is None else block_size, graft=graft, momentum=momentum,
                            **options)


@_explicit_options
def scale_by_sketchy(rank: Optional[int] = None, block_size: Optional[int] = None, graft: str = "adam",
                     momentum: str = "float32", **options):
    """Sketchy's direction (Feinberg, Chen, Sun, Anil & Hazan 2023): Shampoo whose statistics are
    rank-``rank`` (default 128) Frequent-Directions sketches, applied as (U diag(σ²) Uᵀ + (ρ+ε)I)^α."""
    return _direction("sketchy", rank=128 if rank is None else rank, block_size=block_size, graft=graft,
                      momentum=momentum)(**options)


@_explicit_options
def scale_by_extreme_tensoring(momentum: str = "none", **options):
    """Extreme tensoring's direction (Chen, Agarwal, Hazan, Zhang & Zhang 2020): D = G / ∏_i (ε + a_i[j_i])^(1/(2p))
    with per-mode running sums a_i of G² (betas default (0.9, 1.0): sums, not averages)."""
    return _direction("extreme_tensoring", {"betas": (0.9, 1.0)}, momentum=momentum)(**options)


@_explicit_options
def scale_by_kradagrad(variant: str = "star", block_size: Optional[int] = None, graft: str = "adam",
                       momentum: str = "float32", **options):
    """KrADagrad's direction (Mei, Moreno & Walters 2023): inverse statistics updated by a scalar Woodbury step,
    positive roots L̃^(1/(2k)); ``variant`` ``star`` (every axis each step) or ``mm`` (one axis per step)."""
    return _direction("kradagrad", {"kradagrad_variant": variant}, block_size=block_size, graft=graft,
                      momentum=momentum)(**options)


@_explicit_options
def scale_by_soap(block_size: Optional[int] = None, momentum: str = "float32", **options):
    """SOAP's direction (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's factors, the basis refreshed every
    ``precondition_frequency`` steps (eigh first, then one power-iteration step and QR; ``methods.soap``); betas
    default (0.95, 0.95)."""
    return _direction("soap", {"betas": (0.95, 0.95)}, block_size=block_size, momentum=momentum)(**options)


@_explicit_options
def scale_by_adafactor(lr: float = 1e-2, momentum: str = "none", **options):
    """Adafactor's direction (Shazeer & Stern 2018) as torch.optim.Adafactor's: D = α_t·Û/lr with the relative
    step α_t = max(ε₂, RMS(W))·min(lr, 1/√t) and Û the clipped, factored-RMS-normalised gradient
    (``methods.adafactor``), so −lr·D is torch's step. ``lr`` only sets ρ_t = min(lr, 1/√t); the learning rate
    itself is chained after (``adafactor``). Needs the parameters: ``update(grads, state, params)``."""
    return _direction("adafactor", {"lr": lr}, momentum=momentum)(**options)


@_explicit_options
def scale_by_lion(momentum: str = "float32", **options):
    """Lion's direction (Chen et al. 2023): D = lion_lr_ratio · sign(lerp(m, g, 1−β1)), m ← lerp(m, g, 1−β2)
    (``lion_betas`` default (0.9, 0.99), ``lion_lr_ratio`` 0.3; ``methods.lion``)."""
    return _direction("lion", momentum=momentum)(**options)


@_explicit_options
def scale_by_muon(momentum: str = "float32", **options):
    """Muon's direction (Jordan et al. 2024): Newton–Schulz orthogonalised Nesterov momentum of each matrix, scaled to
    AdamW's update RMS; Adam's direction on tensors that are not matrices (``methods.muon``)."""
    return _direction("muon", momentum=momentum)(**options)


# ---- aliases: direction, weight decay, learning rate ----

@_explicit_options
def adam(learning_rate=1e-3, weight_decay=None, mask=None, momentum: str = "float32", **options):
    """AdamW (Loshchilov & Hutter 2019): ``scale_by_adam`` with weight decay and the learning rate."""
    return with_learning_rate(scale_by_adam(momentum=momentum, **options), learning_rate, weight_decay, mask)


@_explicit_options
def shampoo(learning_rate=1e-3, weight_decay=None, mask=None, block_size: Optional[int] = None, graft: str = "adam",
            momentum: str = "float32", **options):
    """Shampoo: ``scale_by_shampoo`` with weight decay and the learning rate."""
    return with_learning_rate(scale_by_shampoo(block_size=block_size, graft=graft, momentum=momentum, **options),
                              learning_rate, weight_decay, mask)


@_explicit_options
def blocked_shampoo(learning_rate=1e-3, weight_decay=None, mask=None, block_size: Optional[int] = None,
                    graft: str = "adam", momentum: str = "float32", **options):
    """Blocked Shampoo: ``scale_by_blocked_shampoo`` with weight decay and the learning rate."""
    return with_learning_rate(scale_by_blocked_shampoo(block_size=block_size, graft=graft, momentum=momentum,
                                                       **options), learning_rate, weight_decay, mask)


@_explicit_options
def sketchy(learning_rate=1e-3, weight_decay=None, mask=None, rank: Optional[int] = None,
            block_size: Optional[int] = None, graft: str = "adam", momentum: str = "float32", **options):
    """Sketchy: ``scale_by_sketchy`` with weight decay and the learning rate."""
    return with_learning_rate(scale_by_sketchy(rank=rank, block_size=block_size, graft=graft, momentum=momentum,
                                               **options), learning_rate, weight_decay, mask)


@_explicit_options
def extreme_tensoring(learning_rate=1e-2, weight_decay=None, mask=None, momentum: str = "none", **options):
    """Extreme tensoring: ``scale_by_extreme_tensoring`` with weight decay and the learning rate."""
    return with_learning_rate(scale_by_extreme_tensoring(momentum=momentum, **options), learning_rate,
                              weight_decay, mask)


@_explicit_options
def kradagrad(learning_rate=1e-3, weight_decay=None, mask=None, variant: str = "star",
              block_size: Optional[int] = None, graft: str = "adam", momentum: str = "float32", **options):
    """KrADagrad: ``scale_by_kradagrad`` with weight decay and the learning rate."""
    return with_learning_rate(scale_by_kradagrad(variant=variant, block_size=block_size, graft=graft,
                                                 momentum=momentum, **options), learning_rate, weight_decay, mask)


@_explicit_options
def soap(learning_rate=3e-3, weight_decay=None, mask=None, block_size: Optional[int] = None,
         momentum: str = "float32", **options):
    """SOAP: ``scale_by_soap`` with weight decay and the learning rate."""
    return with_learning_rate(scale_by_soap(block_size=block_size, momentum=momentum, **options), learning_rate,
                              weight_decay, mask)


@_explicit_options
def adafactor(learning_rate=1e-2, weight_decay=None, mask=None, momentum: str = "none", **options):
    """Adafactor as torch.optim.Adafactor: ``scale_by_adafactor(lr=learning_rate)`` with weight decay and the
    learning rate. A schedule or an injected (traced) learning rate scales the relative step computed for
    ``lr`` (default 1e-2) by η_t/lr."""
    lr = _concrete_number(learning_rate)
    return with_learning_rate(scale_by_adafactor(**({"lr": lr} if lr is not None else {}), momentum=momentum,
                                                 **options), learning_rate, weight_decay, mask)


@_explicit_options
def lion(learning_rate=1e-3, weight_decay=None, mask=None, momentum: str = "float32", **options):
    """Lion: ``scale_by_lion`` with weight decay and the learning rate (updates −η(lion_lr_ratio·sign(·) + λp))."""
    return with_learning_rate(scale_by_lion(momentum=momentum, **options), learning_rate, weight_decay, mask)


@_explicit_options
def muon(learning_rate=1e-3, weight_decay=None, mask=None, momentum: str = "float32", **options):
    """Muon: ``scale_by_muon`` with weight decay and the learning rate."""
    return with_learning_rate(scale_by_muon(momentum=momentum, **options), learning_rate, weight_decay, mask)
