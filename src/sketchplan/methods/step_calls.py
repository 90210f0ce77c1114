"""Kernel calls of the step pieces the methods share (``common``: sanitising, grafting, momentum, the update;
``matrix``: block stacking and norm grafting), so that each method's ``kernel_calls`` lists only its own work
plus these. Each function mirrors the code it names, operation by operation (see ``kernels.calls``).
"""

from __future__ import annotations

import math

from ..kernels.calls import KernelCall, pointwise
from .blocking import MatrixPlan
from .common import adafactor_factors
from .layout import MethodConfig, OptimizerDefaults
from .packing import factor_dims, unpack_calls

#: Elementwise passes of ``common.graft_direction`` per graft over the parameter (adafactor: g², the row and
#: column sums, the outer product, its normalisation, bias correction, sqrt, +ε and the division).
GRAFT_PASSES = {"adam": 6, "rmsprop": 6, "adafactor": 9, "sgd": 0, "none": 0}


def sanitize_calls(numel: int, opts: OptimizerDefaults) -> list[KernelCall]:
    """``SketchplanOptimizer.sanitize``: one read of each gradient (its float32 norm) and the flags' scalar work
    (stack, compare, skip counter); nothing with ``nonfinite_guard`` off (``auto`` counts as on until it is
    resolved for an optimizer's methods: ``OptimizerDefaults.with_guard_for``)."""
    return [pointwise(numel), pointwise(1)] if opts.nonfinite_guard else []


def graft_calls(shape: tuple[int, ...], graft: str, opts: OptimizerDefaults) -> list[KernelCall]:
    """``common.graft_direction``: the graft's state update and its direction."""
    numel = math.prod(shape)
    calls = [pointwise(numel, GRAFT_PASSES[graft])] if GRAFT_PASSES[graft] else []
    if graft == "adafactor" and len(adafactor_factors(shape, opts.merge_dims)) == 2:
        calls.append(pointwise(max(adafactor_factors(shape, opts.merge_dims)), 6))  # r, c decay/add, Σr
    return calls


def momentum_update_calls(numel: int, momentum: str, nesterov: bool, weight_decay: float) -> list[KernelCall]:
    """``common.apply_momentum`` (lerp; bf16 adds the up- and down-cast) and ``common.apply_update``."""
    passes = {"none": 0, "float32": 1, "bfloat16": 3}[momentum]
    passes += (1 if nesterov and momentum != "none" else 0) + (1 if weight_decay else 0) + 1
    return [pointwise(numel, passes)]


def unfold_copies(axis: int, order: int) -> bool:
    """Whether ``matrix.unfold``/``mode_apply`` along ``axis`` copies (a middle axis of an order ≥ 3 block)."""
    return 0 < axis < order - 1


def matrix_frame_calls(shape: tuple[int, ...], mp: MatrixPlan, cfg: MethodConfig,
                       opts: OptimizerDefaults) -> list[KernelCall]:
    """``MatrixRule.step_param`` around the method's hooks: sanitize, graft, block stacking (when a tensor has
    more than one block), per-group norm grafting (two norms and a scale), momentum and the update."""
    numel = math.prod(shape)
    calls = sanitize_calls(numel, opts) + graft_calls(shape, cfg.graft, opts)
    if mp.fallback is None:
        blocked = not (len(mp.groups) == 1 and mp.groups[0][1] == 1)
        if blocked:  # to_blocks of G and A (one stack each) and from_blocks (one copy per block)
            calls.append(pointwise(numel, 2))
            calls.append(pointwise(max(1, numel // sum(c for _, c in mp.groups)), sum(c for _, c in mp.groups)))
        for bshape, count in mp.groups:
            if cfg.graft != "none":
                calls.append(pointwise(count * math.prod(bshape), 3))
    calls += momentum_update_calls(numel, cfg.momentum, opts.nesterov, opts.weight_decay)
    if cfg.packed and mp.fallback is None:  # issue 19b: unpack before the step, pack back what changed
        calls += unpack_calls(factor_dims(mp.groups, cfg), opts, cfg.method)
    return calls
