"""The kernel calls an optimizer step makes: what the planner times with a hardware profile.

Each method module declares ``kernel_calls(shape, cfg, opts) -> list[KernelCall]`` next to its layout; the
planner maps the calls to seconds with ``profiles.CostModel`` and never restates them. A call names a kernel of
the table below, its dimensions, how many equal-size problems one batched call solves (``batch``, e.g. the
blocks of a blocked-Shampoo group) and how often it runs (``every``: 1 = each step, ``precondition_frequency``
for root refreshes). ``variant`` fixes a kernel variant (``None``: the planner may pick the fastest).

======================  ==============  ===========================================================
kernel                  dims            what one problem computes
======================  ==============  ===========================================================
``gemm``                (m, n, k)       (m × k) @ (k × n), 2·m·n·k flops (statistics, mode products)
``inv_root``            (d,)            (S + εI)^a of a symmetric d × d matrix; variants ``eigh``
                                        (float32, float64 retry), ``newton`` (coupled Newton)
``fd_update``           (d, k, n)       one Frequent-Directions update of a rank-k sketch with n new
                                        columns; exact variants ``svd``, ``gram_small``, ``gram_large``,
                                        ``qr_svd``; ``subspace``: warm-started subspace iteration,
                                        O(d·(k+n)·k) (contract: ``subspace_width``)
``lowrank_apply``       (d, k, m)       (U diag(σ²) Uᵀ + ρI)^α X for X of d × m (docs/algorithms.md, Sketchy)
``pointwise``           (n,)            one elementwise pass over n floats (read two, write one);
                                        small n measures the per-operation dispatch cost
``newton_schulz``       (m, n, iters)   Muon's orthogonalisation of an m × n matrix (m ≤ n): ``iters``
                                        quintic Newton–Schulz iterations X ← aX + (bA + cA²)X, A = XXᵀ
======================  ==============  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

#: Kernel name → its variants (the first is the default when a profile has no table for the others).
KERNEL_VARIANTS: dict[str, tuple[str, ...]] = {
    "gemm": ("matmul",),
    "inv_root": ("eigh", "newton"),
    "fd_update": ("svd", "gram_small", "gram_large", "qr_svd", "subspace"),
    "lowrank_apply": ("lowrank",),
    "pointwise": ("lerp",),
    "newton_schulz": ("quintic",),  # issue 19 part A (Muon)
}

#: The Frequent-Directions update kernels (``kernels.torch.frequent_directions``, ``kernels.jax``).
FD_VARIANTS: tuple[str, ...] = KERNEL_VARIANTS["fd_update"]
#: The FD variants that compute the exact update (the same sketch up to rounding); ``subspace`` approximates it.
EXACT_FD_VARIANTS: tuple[str, ...] = ("svd", "gram_small", "gram_large", "qr_svd")

#: ``subspace`` FD variant: power steps refining the l − k new directions P ← orth((I − UUᵀ) X Xᵀ P) after the
#: warm start (on Y Yᵀ from the cold start), and the dimension of the Krylov space on which the largest eigenvalue
#: the new sketch leaves out is estimated (added to ρ; row-vector products, cheap: 5 Lanczos steps leave a
#: shortfall as small as 8 power steps did). ``kernels.torch.frequent_directions``.
SUBSPACE_POWER_STEPS = 2
SUBSPACE_ESTIMATE_STEPS = 5

#: Products A @ B whose B has at most this many columns run as (Bᵀ Aᵀ)ᵀ on CPU (``kernels.torch.products``); the
#: FD memory replays follow the same rule.
THIN_COLUMNS = 64


def subspace_gs_passes() -> tuple[int, ...]:
    """Block Gram–Schmidt passes against U for each basis P of the warm start, in order: the X Ω mixes, then one
    per power step. Twice for the final basis ("twice is enough", Giraud, Langou & Rozložník 2005), once for a
    basis that only seeds the next power step (its next product is projected again)."""
    return (1,) * SUBSPACE_POWER_STEPS + (2,)


def subspace_width(d: int, k: int, n: int) -> int:
    """Columns l of the ``subspace`` variant's basis for a rank-k sketch of dimension d with n new columns: the k
    previous directions plus an oversampling of max(8, k/16) random combinations of the new columns (Halko,
    Martinsson & Tropp 2011 recommend 5–10 extra columns; the (k+1)-th value needs at least one; k/16 was k/8
    until the range finder's thin products and the l × l eigh showed as 20% of a k = 256 update), at most
    min(d, k + n), where the basis spans everything and the update is exact."""
    return min(k + max(8, k // 16), d, k + n)


#: The variants the planner may pick by measured speed (``profiles.CostModel.step``). ``gram_small`` and
#: ``gram_large`` take eigh of a Gram matrix, which squares the condition number: on a decaying spectrum
#: (rank 48) their sketches are ~10× less accurate in float32 than ``svd``/``qr_svd`` (issue 16: 2.3e-5 and
#: 1.65e-4 against 2.6e-6), so they run only when a user names them.
PLANNED_VARIANTS: dict[str, tuple[str, ...]] = {"fd_update": ("svd", "qr_svd", "subspace")}


#: Below this many flops of the exact thin SVD (a few ms on one CPU core) ``auto`` keeps exact FD: the
#: approximation would save little time and lose the paper's definition.
SUBSPACE_MIN_FLOPS = 1e8


def choose_variant(d: int, k: int, n: int) -> str:
    """The default (``auto``) FD variant for a d-dimensional sketch of rank k receiving n new columns without a
    profile. ``subspace`` where its basis holds all of Y or of R^d (l = k + n or l = d: its exact paths) and its
    modelled flops are under 1.25× the exact thin SVD's; ``subspace`` (approximate) where the SVD costs at least
    ``SUBSPACE_MIN_FLOPS`` and the subspace variant under 0.8× its flops; else ``svd`` (thin SVD of the d × (k+n)
    matrix Y, the accurate exact variant at every shape: the Gram variants square the conditioning,
    ``PLANNED_VARIANTS``). The margins are measured: LAPACK's SVD runs at a fraction of the gemm and eigh rate the
    subspace variant runs at — on a 2-core CPU (torch 2.13, float32, ms for svd / subspace) 7.6 / 2.7 at
    (768, 256, 1) (flops ratio 0.76; the exact path), 40.6 / 12.5 at (768, 256, 256) (0.75), 479 / 58 for three
    (1024, 256, 768) blocks (0.20), 16.6 / 2.8 at (256, 256, 768) (0.71; l = d: the d × d Gram's eigh, exact
    FD). With a profile the planner picks the
    measured fastest of ``PLANNED_VARIANTS`` instead (``profiles.cost.CostModel.step``)."""
    sub, svd = flops("fd_update", "subspace", (d, k, n)), flops("fd_update", "svd", (d, k, n))
    if subspace_width(d, k, n) in (k + n, d):  # its exact paths
        return "subspace" if 4 * sub < 5 * svd else "svd"
    if svd >= SUBSPACE_MIN_FLOPS and 5 * sub < 4 * svd:
        return "subspace"
    return "svd"


#: Kernels whose variant is an optimizer option: kernel → ``OptimizerDefaults`` field the variant sets.
VARIANT_OPTIONS: dict[str, str] = {"inv_root": "root_method", "fd_update": "fd_variant"}


@dataclass(frozen=True)
class KernelCall:
    """One kernel call of an optimizer step: ``batch`` problems of size ``dims``, every ``every`` steps."""

    kernel: str
    dims: tuple[int, ...]
    batch: int = 1
    every: int = 1
    variant: str | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNEL_VARIANTS:
            raise ValueError(f"unknown kernel {self.kernel!r}; use one of {', '.join(KERNEL_VARIANTS)}")
        if self.variant is not None and self.variant not in KERNEL_VARIANTS[self.kernel]:
            raise ValueError(f"kernel {self.kernel} has no variant {self.variant!r}")


def gemm(m: int, n: int, k: int, batch: int = 1, every: int = 1) -> KernelCall:
    return KernelCall("gemm", (int(m), int(n), int(k)), int(batch), int(every))


def pointwise(n: int, passes: int = 1, every: int = 1) -> KernelCall:
    """``passes`` elementwise operations over n elements (the batch counts the passes)."""
    return KernelCall("pointwise", (max(1, int(n)),), int(passes), int(every))


def newton_schulz(m: int, n: int, iters: int, batch: int = 1) -> KernelCall:
    """Muon's orthogonalisation of ``batch`` m × n matrices (``kernels.torch.newton_schulz``)."""
    return KernelCall("newton_schulz", (int(min(m, n)), int(max(m, n)), int(iters)), int(batch))


def flops(kernel: str, variant: str, dims: tuple[int, ...]) -> float:
    """Approximate floating-point operations of one problem (the x-axis of the cost tables and the roofline).

    eigh of a d × d matrix ≈ 9d³ (tridiagonalisation, QR sweeps, back-transformation) plus 2d³ to rebuild
    V diag(λ^a) Vᵀ; coupled Newton ≈ 20 iterations of (p+1)·2d³ with p = 4; thin SVD of an a × b matrix
    (a ≥ b) ≈ 4ab² + 8b³; FD with w = k + n columns: ``svd`` SVD(d, w); ``gram_small`` 2dw² + 9w³ + 2dw²;
    ``gram_large`` 2d²w + 9d³; ``qr_svd`` QR of the w × d matrix Yᵀ (2·w·d·min(w, d)) then SVD(d, min(w, d));
    ``subspace`` with l = ``subspace_width`` and m = l − k new directions (the warm path; the cold first steps
    are rarer): X Ω (2dnm), per orthogonalisation to U its Gram–Schmidt passes (4dkm each) and a QR of d × m
    (4dm²), per power step X(XᵀP) (4dnm), QᵀX (2dnl), its Gram (2nl²) and the eigh (9l³), (QᵀX)ᵀM (2nlk),
    Z = U(·) + X(·) (2dk² + 2dnk), the estimate's Krylov steps of v(YYᵀ − ZZᵀ) (4dn + 8dk each), ZᵀZ (2dk²), its
    eigh (9k³), Z V (2dk²); when l = k + n (the exact path) X's part outside U (three Gram–Schmidt passes, 12dkn,
    and a QR, 4dn²), QᵀX (2dwn), its Gram
    (2w²n) and eigh (9w³), U' = Q ub_k (2dwk); when l = d < k + n, ``gram_large``.
    Newton–Schulz on m × n (m ≤ n): per iteration XXᵀ (2m²n), A² (2m³) and (bA + cA²)X (2m²n).
    """
    if kernel == "gemm":
        m, n, k = dims
        return 2.0 * m * n * k
    if kernel == "inv_root":
        (d,) = dims
        return 11.0 * d**3 if variant == "eigh" else 20 * 10.0 * d**3
    if kernel == "fd_update":
        d, k, n = dims
        w = k + n
        if variant == "svd":
            return _svd_flops(d, w)
        if variant == "gram_small":
            return 4.0 * d * w * w + 9.0 * w**3
        if variant == "gram_large":
            return 2.0 * d * d * w + 9.0 * d**3
        if variant == "subspace":
            ll = subspace_width(d, k, n)
            if ll == w:  # exact path: orth(X ⟂ U), QᵀX, its Gram, the eigh, Q ub
                return 12.0 * d * k * n + 4.0 * d * n * n + 2.0 * d * w * n + 2.0 * w * w * n + 9.0 * w**3 \
                    + 2.0 * d * w * k
            if ll == d:  # Q = I: the Ritz step is the d × d Gram's eigh
                return flops(kernel, "gram_large", dims)
            m = ll - k
            # Gram–Schmidt against U: Uᵀ P and U(·) per pass (``subspace_gs_passes``); a QR of d × m per basis
            return (2.0 * d * n * m + sum(subspace_gs_passes()) * 4.0 * d * k * m
                    + (1 + SUBSPACE_POWER_STEPS) * 4.0 * d * m * m + SUBSPACE_POWER_STEPS * 4.0 * d * n * m
                    + 2.0 * d * n * ll + 2.0 * n * ll * ll + 9.0 * ll**3 + 2.0 * n * ll * k
                    + 2.0 * d * k * k + 2.0 * d * n * k + SUBSPACE_ESTIMATE_STEPS * (4.0 * d * n + 8.0 * d * k)
                    + 4.0 * d * k * k + 9.0 * k**3)
        b = min(w, d)
        return 2.0 * w * d * b + _svd_flops(d, b)
    if kernel == "lowrank_apply":
        d, k, m = dims
        return 4.0 * d * k * m + 3.0 * d * m
    if kernel == "pointwise":
        return float(dims[0])
    if kernel == "newton_schulz":
        m, n, iters = dims
        m, n = min(m, n), max(m, n)
        return iters * (4.0 * m * m * n + 2.0 * m**3)
    raise ValueError(f"unknown kernel {kernel!r}")


def bytes_moved(kernel: str, dims: tuple[int, ...]) -> float:
    """Bytes a problem reads and writes at least, in float32 (the bandwidth side of the roofline)."""
    if kernel == "gemm":
        m, n, k = dims
        return 4.0 * (m * k + k * n + m * n)
    if kernel == "inv_root":
        return 4.0 * 3 * dims[0] ** 2
    if kernel == "fd_update":
        d, k, n = dims
        return 4.0 * (2 * d * k + d * n)
    if kernel == "lowrank_apply":
        d, k, m = dims
        return 4.0 * (d * k + 2 * d * m)
    if kernel == "newton_schulz":
        m, n, iters = dims
        return 4.0 * iters * (3 * m * n + 3 * min(m, n) ** 2)
    return 12.0 * dims[0]


def _svd_flops(a: int, b: int) -> float:
    a, b = max(a, b), min(a, b)
    return 4.0 * a * b * b + 8.0 * b**3
