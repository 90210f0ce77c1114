"""optax constructors of issue 19's methods, the twins of ``optimizers.torch.Adafactor``, ``Lion`` and ``Muon``
(steps: ``optimizers.jax.issue19``; the same arguments and defaults; see ``constructors`` for the others)."""

from __future__ import annotations

from ...methods.layout import MethodConfig
from .constructors import _make


def adafactor(learning_rate=1e-2, momentum: str = "none", **options):
    """Adafactor (Shazeer & Stern 2018) as torch.optim.Adafactor, optional momentum; ``methods.adafactor``."""
    return _make(MethodConfig(method="adafactor", momentum=momentum), learning_rate, **options)


def lion(learning_rate=1e-3, momentum: str = "float32", **options):
    """Lion (Chen et al. 2023): D = lion_lr_ratio · sign(lerp(m, g, 1−β1)); ``methods.lion``."""
    return _make(MethodConfig(method="lion", momentum=momentum), learning_rate, **options)


def muon(learning_rate=1e-3, momentum: str = "float32", **options):
    """Muon (Jordan et al. 2024) with AdamW-matched update RMS, AdamW off matrices; ``methods.muon``."""
    return _make(MethodConfig(method="muon", momentum=momentum), learning_rate, **options)
