"""The step's transient memory, narrated as allocations and frees (framework-free).

Each method's ``workspace_bytes`` replays what its torch step (``optimizers.torch``) allocates for one
parameter, tensor by tensor, on a ``Live`` counter: ``alloc`` for a tensor that stays alive, ``free`` when the
code drops it, ``spike`` for a temporary that exists only while the next result is computed. The high-water
mark of that replay is the workspace: bytes live at once *on top of* parameters, gradients and optimizer state.
Tensor-level only: these are the tensors an allocator sees (what ``torch.cuda.max_memory_allocated`` and torch's
``MemTracker`` count). Kernels' internal scratch is not a tensor; where it matters (LAPACK/cuSOLVER ``syevd``
for eigh) it is bounded separately by ``eigh_scratch_bytes``.

Matrix methods (``MatrixRule.step_param``) step one parameter after another, so their workspace is one
parameter's replay (``matrix_step``) and the step's is the largest over parameters. Adam steps a whole param
group with multi-tensor kernels: its transients are per chunk of the group (``adam.group_workspace_bytes``).

``tests/test_step_peak.py`` and ``tests/test_adafactor_lion_muon_compressed.py`` measure every replay against torch's ``MemTracker`` on
random shapes (``tests/replay.py``).
"""

from __future__ import annotations

import math
from functools import wraps
from typing import Callable

from .batching import group_batches, may_batch, shares_calls
from .blocking import MatrixPlan
from .layout import MethodConfig, OptimizerDefaults, dtype_bytes
from .packing import PACKED_FACTORS, factor_dims, pack_transients, unpack_transients


#: Bytes of the step's scalar temporaries (flags, norms, traces), counted once per tensor.
SCALARS = 16

#: Bytes of ``bool(torch.isfinite(x.sum()))`` on float64 values: the sum and its absolute value (8 each) and
#: three one-byte flags (torch's isfinite is ``x == x`` and ``|x| != inf``), alive together at its peak.
FINITE_CHECK = 19


def _whole(nbytes: int) -> int:
    """``nbytes`` when it is a whole, non-negative byte count; a replay that computes anything else (a size
    divided where it should be multiplied, a difference taken the wrong way round) is wrong, so it stops here
    instead of predicting a fractional or negative peak."""
    if type(nbytes) is not int or nbytes < 0:
        raise TypeError(f"replay bug: a byte count must be a non-negative int, got {nbytes!r}")
    return nbytes


class Live:
    """Bytes live now and their high-water mark. Every size is a non-negative int (``_whole``); ``now`` may
    go below zero in a step replayed on its own that frees what its caller allocated (``replayed``)."""

    def __init__(self, scratch: bool = True) -> None:
        self.now = 0
        self.peak = 0
        self.count_scratch = scratch

    def alloc(self, nbytes: int) -> int:
        self.now += _whole(nbytes)
        self.peak = max(self.peak, self.now)
        return nbytes

    def free(self, nbytes: int) -> None:
        self.now -= _whole(nbytes)

    def spike(self, nbytes: int) -> None:
        """A temporary that is freed before anything else is allocated."""
        self.alloc(nbytes)
        self.free(nbytes)

    def scratch(self, nbytes: int) -> None:
        """A kernel's internal scratch (not a tensor): counted unless the replay is tensor-level only."""
        if self.count_scratch:
            self.spike(nbytes)


#: The memo of every ``replayed`` step (``clear_memos``).
_MEMOS: list[dict] = []


def clear_memos() -> None:
    """Forget every remembered replay step (tests: a session must run the replay code it is testing)."""
    for memo in _MEMOS:
        memo.clear()


def replayed(fn: Callable[..., int]) -> Callable[..., int]:
    """Memoise a replay step ``fn(live, *args) -> int`` by its arguments (and whether scratch counts).

    A step only allocates and frees (it never reads ``live``), so its effect on any counter is fixed by two
    numbers: the high-water mark above the bytes live when it starts, and the net change. The first call replays
    it on a fresh counter and records both with its return value; every later call with the same arguments adds
    them to ``live``: peak = max(peak, now + rise), now += net, the same integers the replay would give. A
    planner grid asks for the same FD update (block, rank, columns) under every graft and momentum.
    """
    memo: dict[tuple, tuple[int, int, int]] = {}
    _MEMOS.append(memo)

    @wraps(fn)
    def run(live: Live, *args) -> int:
        key = (live.count_scratch,) + args
        hit = memo.get(key)
        if hit is None:
            fresh = Live(live.count_scratch)
            out = fn(fresh, *args)
            if len(memo) >= 1 << 16:
                memo.clear()
            hit = memo[key] = (fresh.peak, fresh.now, out)
        live.peak = max(live.peak, live.now + hit[0])
        live.now += hit[1]
        return hit[2]

    return run


def eigh_scratch_bytes(d: int, sb: int) -> int:
    """Upper bound of the scratch one eigh of a d × d matrix takes inside the kernel (not a tensor).

    LAPACK ``?syevd`` with eigenvectors documents LWORK ≥ 1 + 6d + 2d² reals and LIWORK ≥ 3 + 5d integers;
    cuSOLVER's ``syevd_bufferSize`` returns at most the same order. torch runs a batch of matrices one after
    another with one work buffer, so the bound does not grow with the batch. Not seen by ``MemTracker``.
    """
    return (1 + 6 * d + 2 * d * d) * sb + (3 + 5 * d) * 4


def graft_peak(live: Live, n: int, shape: tuple[int, ...], graft: str, merge_dims: int, sb: int) -> int:
    """``common.graft_direction``: replays the graft's temporaries; returns the bytes of the direction A it
    leaves alive (0 for sgd, where A is the gradient itself)."""
    from .common import adafactor_factors

    if graft == "sgd":
        return 0
    if graft == "adafactor" and len(adafactor_factors(shape, merge_dims)) == 2:
        rows, cols = adafactor_factors(shape, merge_dims)
        g2 = live.alloc(n * sb)            # g²
        live.spike(rows * sb)              # its row sums, then column sums
        outer = live.alloc(n * sb)         # r cᵀ
        live.spike(n * sb)                 # / Σr  (vhat; kept below)
        live.free(outer)
        vhat = live.alloc(n * sb)
        a = live.alloc(n * sb)             # √vhat, scaled and +ε in place, then g / that into it
        live.free(vhat)
        live.free(g2)
        return a
    return live.alloc(n * sb)              # √v, scaled and +ε in place, then g / that into it


def momentum_update(live: Live, n: int, cfg: MethodConfig, opts: OptimizerDefaults, sb: int, pb: int) -> None:
    """``common.apply_momentum`` and ``common.apply_update`` on a direction in the state dtype."""
    held = 0
    if cfg.momentum != "none" and dtype_bytes(cfg.momentum) != sb:
        held += live.alloc(n * sb)         # m.to(d.dtype), lerped, copied back; kept as the update
    if opts.nesterov and cfg.momentum != "none":
        nest = live.alloc(n * sb)          # lerp(d, m, β1); the cast copy of m is dropped on return
        live.free(held)
        held = nest
    if pb != sb:
        live.spike(n * pb)                 # update.to(p.dtype)
    live.free(held)


Hook = Callable[[Live, int, tuple[int, ...], int, int], None]


def matrix_step(shape: tuple[int, ...], mp: MatrixPlan, cfg: MethodConfig, opts: OptimizerDefaults,
                param_dtype: str, scratch: bool, *, stats: Hook, refresh: Hook | None, precondition: Hook,
                init: Callable[[Live], None] | None = None) -> int:
    """High-water mark of ``MatrixRule.step_param`` for one parameter (the worst step: statistics and a root
    refresh in the same step, as the first step has).

    The hooks replay the method's own work for a block group ``(live, count, block_shape, block_numel, sb)``:
    ``stats`` the statistics update, ``refresh`` the root recomputation, ``precondition`` the direction of the
    group up to and including its norm grafting (which must leave exactly the grafted group, count·block_numel
    elements, alive).
    """
    sb, pb = dtype_bytes(opts.state_dtype), dtype_bytes(param_dtype)
    n = math.prod(shape)
    live = Live(scratch)
    live.alloc(SCALARS)
    if init is not None:
        init(live)
    factors = packed_factors(mp, cfg)
    if factors:  # issue 19b: the packed factors are unpacked before the step and packed back after it
        unpack_transients(live, factors, sb)
    base = live.now
    if pb != sb:
        live.alloc(n * sb)                 # grad.to(state dtype), kept through the step
    graft_peak(live, n, shape, cfg.graft, opts.merge_dims, sb)
    if mp.fallback is None:
        blocked = not (len(mp.groups) == 1 and mp.groups[0][1] == 1)
        if blocked:
            live.alloc(n * sb)             # to_blocks(G): the stacked groups
        for count, bshape in ((c, b) for b, c in mp.groups):
            stats(live, count, bshape, math.prod(bshape), sb)
        if blocked:
            live.alloc(n * sb)             # to_blocks(A)
        for count, bshape in ((c, b) for b, c in mp.groups):
            if refresh is not None:
                refresh(live, count, bshape, math.prod(bshape), sb)
            precondition(live, count, bshape, math.prod(bshape), sb)   # leaves the grafted group alive
        if blocked:
            live.alloc(n * sb)             # from_blocks: the direction, while the blocks are alive
        elif len(mp.merged) >= 2 and tuple(d for d in shape if d != 1) != mp.merged:
            live.alloc(n * sb)             # direction.reshape(p.shape) of a transposed result copies
    momentum_update(live, n, cfg, opts, sb, pb)
    if factors:
        live.free(live.now - base)         # the step's locals are gone when the factors are packed back
        pack_transients(live, factors, PACKED_FACTORS[cfg.method][0] + PACKED_FACTORS[cfg.method][1], sb)
    return live.peak


def packed_factors(mp: MatrixPlan, cfg: MethodConfig) -> list[tuple[int, int, str]]:
    """(count, d, kind) of the packed factors of a preconditioned tensor (none when not ``cfg.packed``)."""
    if not cfg.packed or mp.fallback is not None:
        return []
    return factor_dims(mp.groups, cfg)


def unfold_copy(axis: int, order: int) -> bool:
    """Whether the mode-``axis`` unfolding of an order-``order`` block copies (a middle axis)."""
    return 0 < axis < order - 1


def mode_products(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int,
                  product: Callable[[Live, int, int], None]) -> None:
    """``matrix.mode_apply`` along every axis in turn, then ``graft_blocks``; leaves the grafted group alive.

    ``product(live, d, m)`` replays one batched product on a (count, d, m) unfolding and must leave exactly
    its result (count·d·m elements) alive."""
    order = len(bshape)
    prev = 0
    for i, d in enumerate(bshape):
        copy = live.alloc(count * bn * sb) if unfold_copy(i, order) else 0
        product(live, d, bn // d)
        live.free(copy)
        live.free(prev)
        prev = count * bn * sb
    live.alloc(count * bn * sb)            # D · ‖A‖/‖D‖
    live.free(prev)


def eigh_power(live: Live, count: int, d: int, sb: int) -> int:
    """``roots.symmetric_power``: eigh's eigenvalues and vectors, the scaled vectors and V diag(λᵃ) Vᵀ, with
    ``roots.safe_eigh``'s float64 retry (real training does hit it: float32 eigh fails on rank-deficient
    statistics): the float64 copy of the statistic and float64 eigenpairs, then their cast back. Returns the
    bytes of the result, which the caller keeps until its next axis."""
    ev = safe_eigh(live, count, d, sb)
    w, v = count * d * sb, ev - count * d * sb
    live.spike(2 * count * d * sb)         # clamp_min, + ε
    scale = live.alloc(count * d * sb)
    t = live.alloc(count * d * d * sb)     # V · scale
    out = live.alloc(count * d * d * sb)   # (V · scale) Vᵀ
    live.free(t)
    live.free(scale)
    live.free(v)
    live.free(w)
    return out


def qr_transients(live: Live, count: int, rows: int, cols: int, sb: int) -> int:
    """``roots.qr_q`` of (count, rows, cols) matrices in a dtype of ``sb`` bytes: Q (rows × min) and R (min ×
    cols), R dropped on return; a half-precision input (sb = 2) is factored in float32 — its copy, the float32
    pair, the copy dropped, Q cast back while the pair is alive. Leaves Q alive and returns its bytes."""
    m = min(rows, cols)
    if sb >= 4:
        q = live.alloc(count * rows * m * sb)
        live.spike(count * m * cols * sb)
        return q
    copy = live.alloc(count * rows * cols * 4)
    pair = live.alloc(count * rows * m * 4 + count * m * cols * 4)
    live.free(copy)
    q = live.alloc(count * rows * m * sb)
    live.free(pair)
    return q


def qr_pair_transients(live: Live, count: int, rows: int, cols: int, sb: int) -> int:
    """``roots.qr_pair``: Q (rows × min) and R (min × cols), both kept; a half-precision input is factored in
    float32 — its copy, the float32 pair, the copy dropped, Q and R cast back, the pair dropped. Returns the bytes
    of Q and R."""
    m = min(rows, cols)
    if sb >= 4:
        return live.alloc(count * rows * m * sb + count * m * cols * sb)
    copy = live.alloc(count * rows * cols * 4)
    pair = live.alloc(count * rows * m * 4 + count * m * cols * 4)
    live.free(copy)
    out = live.alloc(count * rows * m * sb) + live.alloc(count * m * cols * sb)
    live.free(pair)
    return out


def safe_eigh(live: Live, count: int, d: int, sb: int) -> int:
    """``roots.safe_eigh`` of (count, d, d) matrices in a dtype of ``sb`` bytes, the float64 retry included (the
    float32 attempt raised, its outputs dropped): the float64 copy and eigenpairs (16·d² bytes at once), then
    the cast back. Leaves the eigenvalues and vectors alive and returns their bytes."""
    if sb < 8:
        m64 = live.alloc(count * d * d * 8)
        ev64 = live.alloc(count * d * d * 8 + count * d * 8)
        live.scratch(eigh_scratch_bytes(d, 8))
        live.free(m64)
        live.spike(FINITE_CHECK)           # finiteness of the sums
        ev = live.alloc(count * d * d * sb + count * d * sb)
        live.free(ev64)
    else:
        ev = live.alloc(count * d * d * sb + count * d * sb)
        live.scratch(eigh_scratch_bytes(d, sb))
        live.spike(FINITE_CHECK)
    return ev


@replayed
def eigh_roots(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
    """Refresh of every axis's root by ``symmetric_power``; each result stays alive until the next axis's."""
    prev = 0
    for d in bshape:
        out = eigh_power(live, count, d, sb)
        live.free(prev)
        prev = out
    live.free(prev)


def unfolds(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int,
            body: Callable[[int, int], None] | None = None, axes=None) -> None:
    """The statistics loop ``for i: x = unfold(G, i); body`` where ``x`` (a copy on middle axes) stays alive
    until the next axis rebinds it."""
    order = len(bshape)
    prev = 0
    for i in (range(order) if axes is None else axes):
        cp = live.alloc(count * bn * sb) if unfold_copy(i, order) else 0
        live.free(prev)
        prev = cp
        if body is not None:
            body(i, bshape[i])
    live.free(prev)


def svd_scratch_bytes(m: int, n: int, sb: int) -> int:
    """Upper bound of the scratch of one thin SVD of an m × n matrix inside the kernel (not a tensor).

    LAPACK ``?gesdd`` with JOBZ='S' documents LWORK ≥ 3·mn + max(mx, 5·mn² + 4·mn) reals and IWORK = 8·mn
    integers (mn = min(m, n), mx = max(m, n)); batches run one matrix at a time with one work buffer.
    """
    mn, mx = min(m, n), max(m, n)
    return (3 * mn + max(mx, 5 * mn * mn + 4 * mn)) * sb + 8 * mn * 4


def _noop(live: Live, count: int, bshape: tuple[int, ...], bn: int, sb: int) -> None:
    """A hook with nothing to replay (the work ran in the batched pass)."""


def batched_group(module, tensors: list[tuple[tuple[int, ...], str]], cfg: MethodConfig, opts: OptimizerDefaults,
                  scratch: bool, *, kernel: str, batch: Callable[[Live, object, list[MatrixPlan]], None],
                  stats: Hook, precondition: Hook) -> int | None:
    """High-water mark of ``MatrixRule.step`` over a param group of (shape, parameter dtype) ``tensors`` when the
    method ``module``'s batches (``methods.batching``, all tensors due) share calls; None when the group steps
    tensor by tensor. The largest of the sanitising pass (16 bytes per tensor), the steps that run tensor by
    tensor without the batched work (``kernel="roots"``: statistics without a refresh), the first pass
    (``kernel="roots"``: each tensor's cast, stacked blocks and statistics update), each batched call
    (``batch(live, batch, plans)`` replays one) and the second pass (each tensor's step with its statistics and
    roots done)."""
    if not may_batch(len(tensors), cfg, opts):
        return None
    batches = group_batches(module, tuple(s for s, _ in tensors), tuple(dt for _, dt in tensors),
                            (True,) * len(tensors), cfg, opts)
    if not shares_calls(batches):
        return None
    plans = [module.plan_for(s, cfg, opts) for s, _ in tensors]
    sb = dtype_bytes(opts.state_dtype)
    peak = 16 * len(tensors)
    for (shape, dt), mp in zip(tensors, plans):
        if kernel == "roots":
            peak = max(peak, matrix_step(shape, mp, cfg, opts, dt, scratch, stats=stats, refresh=None,
                                         precondition=precondition))
            if mp.fallback is None:
                live = Live(scratch)
                live.alloc(SCALARS)
                n = math.prod(shape)
                if dtype_bytes(dt) != sb:
                    live.alloc(n * sb)     # grad.to(state dtype)
                if not (len(mp.groups) == 1 and mp.groups[0][1] == 1):
                    live.alloc(n * sb)     # to_blocks(G)
                for bshape, count in mp.groups:
                    stats(live, count, bshape, math.prod(bshape), sb)
                peak = max(peak, live.peak)
        peak = max(peak, matrix_step(shape, mp, cfg, opts, dt, scratch, stats=_noop, refresh=None,
                                     precondition=precondition))
    for b in batches:
        live = Live(scratch)
        live.alloc(SCALARS)
        batch(live, b, plans)
        peak = max(peak, live.peak)
    return peak


def root_batch(live: Live, d: int, count: int, members: int, sb: int) -> None:
    """``ShampooRule.run_batch`` of ``count`` d × d statistics from ``members`` members: stacked (a copy when
    there are several), their roots (``eigh_power``), each member's slice copied into its root."""
    stacked = live.alloc(count * d * d * sb) if members > 1 else 0
    out = eigh_power(live, count, d, sb)
    live.free(stacked)
    live.free(out)
