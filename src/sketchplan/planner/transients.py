"""The optimizer step's transient memory for a whole plan (the methods' replays, grouped as the optimizer is).

``build_optimizer`` puts tensors with the same method config and kernel variants in one param group, in the
model's parameter order. Adam steps a group with multi-tensor kernels, so its temporaries add up over a chunk of
the group; Shampoo and Sketchy batch their roots or FD updates across the group's tensors (``methods.batching``);
every other method steps tensor after tensor. The step's transient high-water mark is the largest
group's (``methods.group_workspace_bytes``). Two figures: with the kernels' internal scratch (eigh/SVD work
buffers, documented upper bounds: what a device allocator serves) and without (the tensor-level figure
torch's ``MemTracker`` sees).
"""

from __future__ import annotations

import math

from ..methods import group_workspace_bytes
from ..methods.layout import OptimizerDefaults


def step_workspace(tensors, opts: OptimizerDefaults, param_dtype: str | None = None,
                   master_weights: bool = False, owner: bool = False) -> tuple[int, int]:
    """(bytes with kernel scratch, bytes without) of the optimizer step over ``tensors``: (shape, dtype, method
    config, kernel-variant options) of every trainable tensor in parameter order; ``param_dtype`` overrides the
    dtypes. With ``master_weights`` a 16-bit tensor is stepped alone on its fp32 master with a float32 copy of its
    gradient (``optimizers.torch.base.SketchplanOptimizer.on_masters``): its transients are a float32 tensor's
    plus that copy. ``owner``: the DDP/ZeRO placements, whose ranks step their blocks tensor by tensor
    (``optimizers.torch.distributed``: no kernels batched across tensors, ``methods.batching``)."""
    from .memory import MASTER_DTYPES

    if owner and opts.batch_blocks != "none":
        opts = opts.model_copy(update={"batch_blocks": "none"})

    groups: dict[tuple, list[tuple[tuple[int, ...], str]]] = {}
    for shape, dtype, cfg, options in tensors:
        groups.setdefault((cfg, tuple(sorted(options.items()))), []).append((tuple(shape), param_dtype or dtype))
    with_scratch = without = 0
    for (cfg, variant), tensors in groups.items():
        o = opts.model_copy(update=dict(variant)) if variant else opts
        alone = [t for t in tensors if master_weights and t[1] in MASTER_DTYPES]
        together = [t for t in tensors if t not in alone] if alone else tensors
        if together:
            with_scratch = max(with_scratch, group_workspace_bytes(together, cfg, o, scratch=True))
            without = max(without, group_workspace_bytes(together, cfg, o, scratch=False))
        for shape, _ in alone:
            copy = 4 * math.prod(shape)
            with_scratch = max(with_scratch, group_workspace_bytes([(shape, "float32")], cfg, o, scratch=True) + copy)
            without = max(without, group_workspace_bytes([(shape, "float32")], cfg, o, scratch=False) + copy)
    return with_scratch, without
