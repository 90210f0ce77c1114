"""The six methods as optax transformations (the JAX twins of ``Adam``, ``Shampoo``, ``BlockedShampoo``,
``Sketchy``, ``ExtremeTensoring`` and ``KrADagrad``; same arguments and defaults, same directions).

Each returns ``transform.uniform_transform``: every parameter of the tree gets the method; its state is the
method's layout per parameter plus one int32 step counter. ``learning_rate`` is a float or an optax schedule;
every other keyword is an ``OptimizerDefaults`` field (``betas``, ``eps``, ``weight_decay``, ``shampoo_eps``,
``precondition_frequency``, ``start_preconditioning_step``, ``merge_dims``, ``max_precond_dim``, ``state_dtype``,
``nesterov``, ...).
"""

from __future__ import annotations

from ...methods.layout import MethodConfig, OptimizerDefaults
from .transform import LearningRate, uniform_transform


def _make(cfg: MethodConfig, learning_rate: LearningRate, **options):
    lr = learning_rate if isinstance(learning_rate, (int, float)) else OptimizerDefaults().lr
    schedule = None if isinstance(learning_rate, (int, float)) else learning_rate
    return uniform_transform(cfg, OptimizerDefaults(lr=lr, **options), schedule)


def adam(learning_rate: LearningRate = 1e-3, momentum: str = "float32", **options):
    """AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): D = m̂ / (√v̂ + ε); ``momentum`` is m's dtype
    (``float32``, ``bfloat16``) or ``none`` (RMSProp with bias correction). Weight decay defaults to 0."""
    return _make(MethodConfig(method="adam", momentum=momentum), learning_rate, **options)


def shampoo(learning_rate: LearningRate = 1e-3, block_size: int | None = None, graft: str = "adam",
            momentum: str = "float32", root_method: str = "eigh", **options):
    """Shampoo (Gupta, Koren & Singer 2018; Anil et al. 2020): D = G ×_1 (S_1 + εI)^(−1/(2k)) … norm-grafted;
    ``block_size`` B gives blocked Shampoo."""
    method = "shampoo" if block_size is None else "blocked_shampoo"
    cfg = MethodConfig(method=method, block_size=block_size, graft=graft, momentum=momentum,
                       packed=options.pop("packed", False))
    return _make(cfg, learning_rate, root_method=root_method, **options)


def blocked_shampoo(learning_rate: LearningRate = 1e-3, block_size: int = 1024, **options):
    """Blocked Shampoo (Anil et al. 2020): Shampoo on blocks of at most ``block_size`` along every dimension."""
    return shampoo(learning_rate, block_size=block_size, **options)


def sketchy(learning_rate: LearningRate = 1e-3, rank: int = 128, block_size: int | None = None,
            graft: str = "adam", momentum: str = "float32", fd_variant: str = "auto", **options):
    """Sketchy (Feinberg, Chen, Sun, Anil & Hazan 2023): Shampoo whose statistics are rank-``rank``
    Frequent-Directions sketches, applied as (U diag(σ²) Uᵀ + (ρ+ε)I)^α without d×d matrices."""
    cfg = MethodConfig(method="sketchy", rank=rank, block_size=block_size, graft=graft, momentum=momentum)
    return _make(cfg, learning_rate, fd_variant=fd_variant, **options)


def extreme_tensoring(learning_rate: LearningRate = 1e-2, betas: tuple[float, float] = (0.9, 1.0),
                      eps: float = 1e-8, et_max_dim: int = 64, momentum: str = "none", **options):
    """Extreme tensoring (Chen, Agarwal, Hazan, Zhang & Zhang 2020): D = G / ∏_i (ε + a_i[j_i])^(1/(2p)) with
    per-mode running sums a_i of G²."""
    return _make(MethodConfig(method="extreme_tensoring", momentum=momentum), learning_rate, betas=betas, eps=eps,
                 et_max_dim=et_max_dim, **options)


def kradagrad(learning_rate: LearningRate = 1e-3, variant: str = "star", block_size: int | None = None,
              graft: str = "adam", momentum: str = "float32", **options):
    """KrADagrad (Mei, Moreno & Walters 2023): inverse statistics updated by a scalar Woodbury step, positive
    roots L̃^(1/(2k)); ``variant`` ``star`` (every axis each step) or ``mm`` (one axis per step)."""
    cfg = MethodConfig(method="kradagrad", block_size=block_size, graft=graft, momentum=momentum,
                       packed=options.pop("packed", False))
    return _make(cfg, learning_rate, kradagrad_variant=variant, **options)


def soap(learning_rate: LearningRate = 3e-3, betas: tuple[float, float] = (0.95, 0.95), block_size: int | None = None,
         momentum: str = "float32", packed: bool = False, **options):
    """SOAP (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's factors, the basis refreshed every
    ``precondition_frequency`` steps (eigh first, then one power-iteration step and QR; ``methods.soap``);
    ``packed`` stores the statistics as packed triangles (issue 19b)."""
    cfg = MethodConfig(method="soap", block_size=block_size, momentum=momentum, packed=packed)
    return _make(cfg, learning_rate, betas=betas, **options)
