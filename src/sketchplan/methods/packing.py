"""Packed symmetric factors (issue 19b): a symmetric d×d statistic or root stored in d(d+1)/2 elements.

Shampoo's statistics S and roots P, KrADagrad's inverse statistics L̃ and roots, and SOAP's statistics L, R are
symmetric, so half of each square is redundant. ``MethodConfig.packed`` stores them in the *rectangular full
packed* format of LAPACK (Gustavson, Gunnels & Sexton 2007, "Minimal data copy for dense linear algebra
factorization"; LAPACK's RFP, e.g. ``?sfrk``, ``?pftrf``): with n1 = ⌈d/2⌉ and n2 = ⌊d/2⌋ and the split

    A = [[A11, A21ᵀ], [A21, A22]]     (A11: n1×n1, A22: n2×n2, A21: n2×n1)

the packed array is an R×n1 matrix (R = d+1 for even d, d for odd d; R·n1 = d(d+1)/2), read as

    top = rows [0, n2+1):   its lower triangle (rows n2+1−n1 …) holds tril(A11) and the upper triangle of
                            ``top[:n2, n1−n2:]`` holds triu(A22) — two triangles sharing one rectangle;
    bottom = rows [n2+1, R): A21.

Packing and unpacking are triangle selections, copies and transposes of quarter-size blocks: no index tensors (a
``triu_indices`` gather would need 16 bytes of int64 index per packed element, four times the float32 saving).
The state tensor is stored flat, (count, d(d+1)/2) per block group; the backends view it as (count, R, n1).

Cost (the kernel calls below and ``unpack_transients``): before the step every packed factor of the tensor is
unpacked into a full (count, d, d) temporary (the step then runs unchanged on the full matrices), and after the
step the factors that changed (statistics on statistics steps, roots on refresh steps) are packed back. The
unpacked squares are workspace: they live through one tensor's step, so packing trades state of every tensor for
the workspace of the largest one.

DistributedShampoo (facebookresearch/optimizers) reports that storing factors as triangles saves roughly a third
to a half of its optimizer memory; here a packed Shampoo factor pair takes d(d+1) instead of 2d² elements.
"""

from __future__ import annotations

from ..kernels.calls import KernelCall, pointwise
from .common import preconditioning_start
from .layout import MethodConfig, OptimizerDefaults

#: Per method: (statistics names, root names) of the symmetric factors it may pack (``blocks{g}.<name>{i}``).
#: SOAP's eigenbases Q are orthogonal, not symmetric: they stay square.
PACKED_FACTORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "shampoo": (("stat",), ("root",)),
    "blocked_shampoo": (("stat",), ("root",)),
    "kradagrad": (("inv",), ("root",)),
    "soap": (("stat",), ()),
}


def packed_numel(d: int) -> int:
    """Elements of a packed symmetric d×d matrix: d(d+1)/2."""
    return d * (d + 1) // 2


def rfp_shape(d: int) -> tuple[int, int]:
    """(rows, cols) of the rectangular full packed array of a symmetric d×d matrix (module docstring)."""
    n1 = d - d // 2
    return (d + 1 if d % 2 == 0 else d, n1)


def halves(d: int) -> tuple[int, int]:
    """(n1, n2) = (⌈d/2⌉, ⌊d/2⌋): the sizes of the diagonal blocks A11 and A22."""
    return d - d // 2, d // 2


def is_packed_name(method: str, name: str) -> bool:
    """Whether state tensor ``name`` (``blocks{g}.<what>{i}``) is a packed factor of ``method``."""
    if "." not in name:
        return False
    what = name.split(".", 1)[1].rstrip("0123456789")
    stats, roots = PACKED_FACTORS.get(method, ((), ()))
    return what in stats or what in roots


def changed_names(method: str, step: int, opts: OptimizerDefaults) -> tuple[str, ...]:
    """Which kinds of packed factor one step changes (and so packs back): statistics on statistics steps
    (every ``stats_every`` from step 1), roots on refresh steps (every ``precondition_frequency`` from
    ``start_preconditioning_step``). SOAP updates its statistics and refreshes its basis after the update,
    with the same schedule."""
    stats, roots = PACKED_FACTORS[method]
    out: tuple[str, ...] = ()
    if (step - 1) % opts.stats_every == 0:
        out += stats
    start = preconditioning_start(opts, stored_roots=True)  # the methods with packed roots store them
    if roots and step >= start and (step - start) % opts.precondition_frequency == 0:
        out += roots
    return out


#: Unpacking a d×d factor in elementwise passes over d²/4 elements: the lower and strictly-lower triangles of
#: A11 and the upper and strictly-upper triangles of A22 (each selected into a temporary, then copied or added:
#: 4 operations over n1² and n2²) and the copies of A21 and A21ᵀ: 10 operations, three of which read a
#: transposed view. Measured (torch 2.13, 1 CPU thread, d = 27…1024) at 2.1–2.9× the time of 10 contiguous
#: passes, hence 25.
UNPACK_PASSES = 25
#: Packing: zeroing the top rectangle, the two triangle selections with their adds and the copy of A21 (6
#: passes over d²/4, measured 1.1–1.3× that for d ≥ 256), plus ``PACK_DISPATCHES`` small operations (views of the
#: packed rectangle) that dominate small factors (20 µs for d = 27 where 6 passes took 7 µs).
PACK_PASSES = 7
PACK_DISPATCHES = 12


def unpack_calls(factors: list[tuple[int, int, str]], opts: OptimizerDefaults, method: str) -> list[KernelCall]:
    """Kernel calls of unpacking every packed factor (count, d, kind) each step (``UNPACK_PASSES``) and packing
    back the changed ones (``PACK_PASSES`` and ``PACK_DISPATCHES``)."""
    stats, roots = PACKED_FACTORS[method]
    calls = []
    for count, d, kind in factors:
        quarter = max(1, count * d * d // 4)
        calls.append(pointwise(quarter, UNPACK_PASSES))
        every = opts.stats_every if kind in stats else opts.precondition_frequency
        calls += [pointwise(quarter, PACK_PASSES, every), pointwise(1, PACK_DISPATCHES, every)]
    return calls


def factor_dims(mp_groups, cfg: MethodConfig) -> list[tuple[int, int, str]]:
    """(count, d, kind) of every packed factor of a parameter whose block groups are ``mp_groups``."""
    stats, roots = PACKED_FACTORS[cfg.method]
    return [(count, d, kind) for bshape, count in mp_groups for d in bshape for kind in stats + roots]


def unpack_transients(live, factors: list[tuple[int, int, str]], sb: int) -> int:
    """Replay ``packing.unpack_state`` (torch): each factor's full square, allocated and kept through the step,
    with one triangle temporary at a time (the larger quarter, n1²) while it is filled. Returns the bytes kept."""
    kept = 0
    for count, d, _ in factors:
        kept += live.alloc(count * d * d * sb)
        n1, _ = halves(d)
        live.spike(count * n1 * n1 * sb)
    return kept


def pack_transients(live, factors: list[tuple[int, int, str]], changed: tuple[str, ...], sb: int) -> None:
    """Replay ``packing.pack_state``: one triangle temporary (n1²) per changed factor."""
    for count, d, kind in factors:
        if kind in changed:
            n1, _ = halves(d)
            live.spike(count * n1 * n1 * sb)


__all__ = ["PACKED_FACTORS", "changed_names", "factor_dims", "halves", "is_packed_name", "pack_transients",
           "packed_numel", "rfp_shape", "unpack_calls", "unpack_transients"]
