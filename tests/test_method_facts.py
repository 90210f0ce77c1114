"""The methods' framework-free facts for small concrete shapes, written out by hand (issue 21: the survivors of the
mutation run of ``src/sketchplan/methods/``).

Every expected value below is typed in from the method's description — the papers' algorithms, the module
docstrings and the torch rule each call list mirrors, operation by operation — never computed by the code under
test. Kernel calls are compared as multisets (their order does not change a step's time).

Notation: ``pw(n, p, e)`` = p elementwise passes over n elements every e steps; ``gemm(m, n, k, b, e)`` = b
products (m × k) @ (k × n) every e steps; ``root(d, b, e)`` = b eigh-based matrix roots of d × d every e steps.
"""

from __future__ import annotations

from collections import Counter

import pytest

from sketchplan.kernels.calls import KernelCall
from sketchplan.methods import METHOD_MODULES, MethodConfig, OptimizerDefaults, StateTensor, kernel_calls
from sketchplan.methods import placement


def pw(n, passes=1, every=1):
    return KernelCall("pointwise", (n,), passes, every)


def gemm(m, n, k, batch=1, every=1):
    return KernelCall("gemm", (m, n, k), batch, every)


def root(d, batch=1, every=10):
    return KernelCall("inv_root", (d,), batch, every, variant="eigh")


def same_calls(got, expected):
    assert Counter(got) == Counter(expected), (sorted(map(repr, Counter(got) - Counter(expected))),
                                               sorted(map(repr, Counter(expected) - Counter(got))))


# ---------------------------------------------------------------------------------------------------- labels

LABELS = [  # (config, the label ``MethodConfig.label`` documents: method(inner) +graft/momentum +v:compress)
    (dict(method="adam"), "adam"),
    (dict(method="adam", momentum="none"), "adam +nomom"),
    (dict(method="adam", momentum="bfloat16", compress="int8"), "adam +bf16 +v:8bit"),
    (dict(method="adam", momentum="int8", compress="bfloat16"), "adam +m8 +v:bf16"),
    (dict(method="lion", momentum="none"), "lion +nomom"),
    (dict(method="muon"), "muon"),
    (dict(method="shampoo"), "shampoo +adam/fp32"),
    (dict(method="shampoo", graft="sgd", momentum="none", packed=True), "shampoo(packed) +sgd/nomom"),
    (dict(method="blocked_shampoo", block_size=128, graft="rmsprop", momentum="bfloat16"),
     "blocked_shampoo(B=128) +rmsprop/bf16"),
    (dict(method="sketchy", rank=256, graft="adafactor", momentum="bfloat16"), "sketchy(k=256) +adafactor/bf16"),
    (dict(method="sketchy", rank=8, block_size=64, momentum="int8", compress="int8"),
     "sketchy(k=8, B=64) +adam/m8 +v:8bit"),
    (dict(method="kradagrad", graft="none", batch_dims=1, splits=(3, 5), packed=True),
     "kradagrad(per expert, split 3|5, packed) +none/fp32"),
    (dict(method="soap", block_size=32, momentum="none"), "soap(B=32) +nomom"),
    (dict(method="soap", momentum="bfloat16"), "soap +bf16"),
    (dict(method="soap", momentum="int8"), "soap +m8"),
    (dict(method="extreme_tensoring"), "extreme_tensoring +fp32"),
    (dict(method="extreme_tensoring", momentum="none"), "extreme_tensoring"),
    (dict(method="extreme_tensoring", momentum="int8"), "extreme_tensoring +m8"),
    (dict(method="adafactor", momentum="bfloat16"), "adafactor +bf16"),
    (dict(method="adafactor", momentum="none", batch_dims=1, splits=(2, 2)), "adafactor"),
    (dict(method="lion", momentum="bfloat16", compress="bfloat16"), "lion +bf16 +v:bf16"),
    (dict(method="muon", momentum="int8"), "muon +m8"),
]


@pytest.mark.parametrize("kw,label", LABELS, ids=[lb for _, lb in LABELS])
def test_labels_read_as_documented(kw, label):
    assert MethodConfig(**kw).label() == label


# ------------------------------------------------------------------------------------------------------ grids

def test_grids_are_the_documented_options():
    """Each module's ``grid`` docstring, for ranks (8, 64) and block sizes (32, 128)."""
    ranks, blocks = (8, 64), (32, 128)
    sq_pk = [{}, {"packed": True}]
    expected = {
        "adam": [{}], "adafactor": [{}], "lion": [{}], "muon": [{}], "extreme_tensoring": [{}],
        "shampoo": sq_pk,
        "blocked_shampoo": [{"block_size": 32}, {"block_size": 32, "packed": True},
                            {"block_size": 128}, {"block_size": 128, "packed": True}],
        "kradagrad": sq_pk + [{"block_size": 32}, {"block_size": 32, "packed": True},
                              {"block_size": 128}, {"block_size": 128, "packed": True}],
        "soap": [{"block_size": None}, {"block_size": None, "packed": True},
                 {"block_size": 32}, {"block_size": 32, "packed": True},
                 {"block_size": 128}, {"block_size": 128, "packed": True}],
        # every rank unblocked; blocked only inside a block larger than the rank (64 does not fit in 32)
        "sketchy": [{"rank": 8}, {"rank": 64}, {"rank": 8, "block_size": 32}, {"rank": 8, "block_size": 128},
                    {"rank": 64, "block_size": 128}],
    }
    assert set(expected) == set(METHOD_MODULES)
    for method, module in METHOD_MODULES.items():
        got = module.grid(ranks, blocks)
        assert sorted(map(repr, got)) == sorted(map(repr, expected[method])), method
        for options in got:  # every option is a valid configuration of its method
            MethodConfig(method=method, **{k: v for k, v in options.items() if v is not None})


# ----------------------------------------------------------------------------- kernel calls: diagonal methods

def test_adam_kernel_calls_by_hand():
    """``adam.kernel_calls``' docstring: with m, v and the parameter in one dtype, the finiteness sum and torch's
    fused kernel (counted as 3 passes: it streams 7 arrays), weight decay included; otherwise the multi-tensor
    step: finiteness sum, m's lerp, v's decay and g² add, √v, bias correction, +ε, addcdiv: 7 passes without m,
    +4 for a bfloat16 m (cast for the lerp, cast/divide/add of the mixed update), +1 for weight decay; and the
    skip counter's scalar add."""
    n = 24 * 40
    for momentum, wd, passes in [("float32", 0.0, 4), ("none", 0.0, 7), ("bfloat16", 0.0, 12),
                                 ("float32", 0.1, 4), ("none", 0.1, 8), ("bfloat16", 0.1, 13)]:
        got = kernel_calls((24, 40), MethodConfig(method="adam", momentum=momentum), OptimizerDefaults(weight_decay=wd))
        same_calls(got, [pw(n, passes), pw(1)])


def test_compressed_state_adds_its_decode_and_encode_passes():
    """``compression.quantisation_passes``: int8 = gather + scale (2), |x|, block max, divide, cast (4) and a
    searchsorted of ~8 comparisons (8): 14 passes per coded tensor; bfloat16: the two casts. int8 momentum runs
    the plain rule with float32 momentum (so Adam's fused step: 4 passes)."""
    n = 24 * 40
    opts = OptimizerDefaults()
    same_calls(kernel_calls((24, 40), MethodConfig(method="adam", compress="int8"), opts),
               [pw(n, 4), pw(1), pw(n, 14)])
    same_calls(kernel_calls((24, 40), MethodConfig(method="adam", compress="bfloat16"), opts),
               [pw(n, 4), pw(1), pw(n, 2)])
    same_calls(kernel_calls((24, 40), MethodConfig(method="adam", momentum="int8", compress="int8"), opts),
               [pw(n, 4), pw(1), pw(n, 14), pw(n, 14)])
    same_calls(kernel_calls((24, 40), MethodConfig(method="adam", momentum="int8"), opts),
               [pw(n, 4), pw(1), pw(n, 14)])
    # a matrix method's adam graft second moment in bfloat16: Shampoo's calls plus 2 passes over the graft
    plain = kernel_calls((24, 40), MethodConfig(method="shampoo"), opts)
    same_calls(kernel_calls((24, 40), MethodConfig(method="shampoo", compress="bfloat16"), opts), plain + [pw(n, 2)])


def test_lion_kernel_calls_by_hand():
    """Lion (Chen et al. 2023): sanitize (a sum and the counter add), c = β1 m + (1−β1) g and sign(c) (2 passes),
    then ``momentum_update_calls``: m's lerp (+2 bf16 casts), weight decay, the update."""
    n = 300
    opts = OptimizerDefaults()
    same_calls(kernel_calls((300,), MethodConfig(method="lion"), opts), [pw(n), pw(1), pw(n, 2), pw(n, 2)])
    same_calls(kernel_calls((300,), MethodConfig(method="lion", momentum="bfloat16"),
                            OptimizerDefaults(weight_decay=0.1)), [pw(n), pw(1), pw(n, 2), pw(n, 5)])
    same_calls(kernel_calls((300,), MethodConfig(method="lion", momentum="none"), opts),
               [pw(n), pw(1), pw(n, 2), pw(n, 1)])


def test_adafactor_kernel_calls_by_hand():
    """Adafactor (Shazeer & Stern 2018): factored for a matrix — the row and column mean squares (2 passes over G),
    the factor updates on the longer vector (6 passes over max(rows, cols)), V̂ = R C and its normalisation
    (2 passes over G); unfactored for a vector — G², V's decay and add (3 passes); then clamp, rsqrt, ×G, the two
    RMS reductions and the scaling (6); momentum and the update (no Nesterov)."""
    opts = OptimizerDefaults()
    same_calls(kernel_calls((24, 40), MethodConfig(method="adafactor"), opts),
               [pw(960), pw(1), pw(960, 2), pw(40, 6), pw(960, 2), pw(960, 6), pw(960, 2)])
    same_calls(kernel_calls((40, 24), MethodConfig(method="adafactor", momentum="none"), opts),
               [pw(960), pw(1), pw(960, 2), pw(40, 6), pw(960, 2), pw(960, 6), pw(960, 1)])
    # order 3: rows (2, 3, 1) hold 6, columns (2, 1, 5) hold 10
    same_calls(kernel_calls((2, 3, 5), MethodConfig(method="adafactor"), OptimizerDefaults(weight_decay=0.1)),
               [pw(30), pw(1), pw(30, 2), pw(10, 6), pw(30, 2), pw(30, 6), pw(30, 3)])
    same_calls(kernel_calls((300,), MethodConfig(method="adafactor", momentum="bfloat16"), opts),
               [pw(300), pw(1), pw(300, 3), pw(300, 6), pw(300, 4)])


def test_muon_kernel_calls_by_hand():
    """Muon (Jordan et al. 2024): sanitize, the momentum, its Nesterov interpolation and the normalisation
    (3 passes), ``ns_steps`` Newton–Schulz iterations on the (short × long) matrix, then Nesterov momentum's
    update (lerp + Nesterov + update); a vector takes Adam's calls."""
    opts = OptimizerDefaults()
    ns = KernelCall("newton_schulz", (24, 40, 5), 1)
    same_calls(kernel_calls((24, 40), MethodConfig(method="muon"), opts), [pw(960), pw(1), pw(960, 3), ns, pw(960, 3)])
    same_calls(kernel_calls((40, 24), MethodConfig(method="muon", momentum="none"), OptimizerDefaults(weight_decay=0.1)),
               [pw(960), pw(1), pw(960, 3), ns, pw(960, 2)])
    same_calls(kernel_calls((4, 24, 40), MethodConfig(method="muon", batch_dims=1), OptimizerDefaults(ns_steps=3)),
               [pw(3840), pw(1), pw(3840, 3), KernelCall("newton_schulz", (24, 40, 3), 4), pw(3840, 3)])
    same_calls(kernel_calls((300,), MethodConfig(method="muon"), opts), [pw(300, 4), pw(1)])  # Adam's (fused)


# ------------------------------------------------------------------------------------ kernel calls: KrADagrad

def _kradagrad_axis(count, d, n, x_passes, dd_passes, every, pf=10):
    """One block group's axis of ``KrADagradRule.update_statistics``/``refresh_roots``: the passes over X
    (unfold copy of a middle axis, √weight scaling, X⊙X and its sum, X/‖X‖), over L̃ (÷decay, the quotient, the
    subtraction, L̃ + L̃ᵀ, its half, the copy back and the norm), L̃X̂ (d, n, d), X̂(L̃X̂)ᵀ and (L̃X̂)(L̃X̂)ᵀ
    (d, d, n); every ``pf`` steps the eigh root and its copy into the state."""
    return [pw(count * d * n, x_passes, every), pw(count * d * d, dd_passes, every), gemm(d, n, d, count, every),
            gemm(d, d, n, count, every), gemm(d, d, n, count, every), root(d, count, pf), pw(count * d * d, 1, pf)]


def test_kradagrad_star_kernel_calls_by_hand():
    """(24, 40) unmerged (merge_dims = 1; 960 ≤ the default 1024 would merge it into one axis), otherwise defaults: β2 = 0.999 < 1, so X is scaled by √(1−β2) (one more pass over X) and L̃ is divided by
    β2 (one more pass over L̃): 3 passes over X and 7 over L̃ per axis, each step. Frame: sanitize, the Adam
    graft (6 passes), the norm graft (3), float32 momentum and the update (2); the mode products P_i G."""
    got = kernel_calls((24, 40), MethodConfig(method="kradagrad"), OptimizerDefaults(merge_dims=1))
    same_calls(got, [pw(960), pw(1), pw(960, 6), pw(960, 3), pw(960, 2)]
               + _kradagrad_axis(1, 24, 40, 3, 7, 1) + _kradagrad_axis(1, 40, 24, 3, 7, 1)
               + [gemm(24, 40, 24), gemm(40, 24, 40)])


def test_kradagrad_mm_order_three_kernel_calls_by_hand():
    """(6, 5, 4) unmerged (merge_dims = 1), ``mm``, a running sum (β2 = 1: no division of L̃, X scaled by
    √stats_every), stats_every 2: each axis is updated every 2·3 = 6 steps; the middle axis's unfolding copies
    (one more pass over X, and one in its mode product). SGD graft: no graft state passes, the norm graft
    stays; no momentum: the update alone."""
    opts = OptimizerDefaults(merge_dims=1, kradagrad_variant="mm", betas=(0.9, 1.0), stats_every=2,
                             precondition_frequency=4)
    got = kernel_calls((6, 5, 4), MethodConfig(method="kradagrad", graft="sgd", momentum="none"), opts)
    same_calls(got, [pw(120), pw(1), pw(120, 3), pw(120, 1)]
               + _kradagrad_axis(1, 6, 20, 3, 6, 6, 4) + _kradagrad_axis(1, 5, 24, 4, 6, 6, 4)
               + _kradagrad_axis(1, 4, 30, 3, 6, 6, 4)
               + [gemm(6, 20, 6), pw(120), gemm(5, 24, 5), gemm(4, 30, 4)])


def test_kradagrad_blocked_kernel_calls_by_hand():
    """(24, 40) unmerged, in blocks of 16: rows 16 + 8, columns 16 + 16 + 8, so block groups (16, 16) × 2, (16, 8) × 1,
    (8, 16) × 2, (8, 8) × 1 — six blocks. Blocking adds the stacking of G and of the direction (2 passes over G)
    and one copy per block back (6 passes of 960/6 = 160); the norm graft runs per group. β2 = 1 and
    stats_every = 1: X unscaled (2 passes, weight 1) and L̃ not divided (6 passes). Nesterov and weight decay add
    a pass each to the update."""
    opts = OptimizerDefaults(merge_dims=1, betas=(0.9, 1.0), nesterov=True, weight_decay=0.01,
                             precondition_frequency=5)
    got = kernel_calls((24, 40), MethodConfig(method="kradagrad", block_size=16, graft="adam"), opts)
    frame = [pw(960), pw(1), pw(960, 6), pw(960, 2), pw(160, 6),
             pw(512, 3), pw(128, 3), pw(256, 3), pw(64, 3), pw(960, 4)]
    stats = (_kradagrad_axis(2, 16, 16, 2, 6, 1, 5) * 2                                    # (16, 16) × 2
             + _kradagrad_axis(1, 16, 8, 2, 6, 1, 5) + _kradagrad_axis(1, 8, 16, 2, 6, 1, 5)  # (16, 8)
             + _kradagrad_axis(2, 8, 16, 2, 6, 1, 5) + _kradagrad_axis(2, 16, 8, 2, 6, 1, 5)  # (8, 16) × 2
             + _kradagrad_axis(1, 8, 8, 2, 6, 1, 5) * 2)                                    # (8, 8)
    apply = [gemm(16, 16, 16, 2)] * 2 + [gemm(16, 8, 16), gemm(8, 16, 8)] + [gemm(8, 16, 8, 2), gemm(16, 8, 16, 2)] \
        + [gemm(8, 8, 8)] * 2
    same_calls(got, frame + stats + apply)


# --------------------------------------------------------------------------------------- placement (per rank)

def _blocked_layout():
    """Blocked Shampoo's layout of a (24, 40) tensor in blocks of 16, written out: groups (16, 16) × 2,
    (16, 8) × 1, (8, 16) × 2, (8, 8) × 1, each with a statistic and a root per axis; then the graft and momentum."""
    out = []
    for g, (count, dims) in enumerate([(2, (16, 16)), (1, (16, 8)), (2, (8, 16)), (1, (8, 8))]):
        for kind in ("stat", "root"):
            for i, d in enumerate(dims):
                out.append(StateTensor(f"blocks{g}.{kind}{i}", (count, d, d), "float32"))
    return out + [StateTensor("graft_exp_avg_sq", (24, 40), "float32"), StateTensor("momentum", (24, 40), "bfloat16"),
                  StateTensor("nonfinite_skips", (), "int32")]


def test_owner_placement_cuts_blocks_by_owner():
    lay = _blocked_layout()
    assert placement.block_counts(lay) == [2, 1, 2, 1]
    # one block's bytes: 2 · 4 · (d0² + d1²)
    b16, b168, b8 = 8 * (256 + 256), 8 * (256 + 64), 8 * (64 + 64)
    assert placement.block_bytes(lay) == [b16, b16, b168, b168, b168, b8]
    assert placement.rest_bytes(lay) == 960 * 4 + 960 * 2 + 4
    owners = [0, 1, 1, 0, 1, 0]
    assert placement.owned_by_group(owners, lay, 0) == [[0], [], [0], [0]]
    assert placement.owned_by_group(owners, lay, 1) == [[1], [0], [1], []]
    assert placement.owned_by_group(owners, lay, 2) == [[], [], [], []]
    with pytest.raises(ValueError, match="7 block owners given for 6 blocks"):
        placement.owned_by_group(owners + [0], lay, 0)
    with pytest.raises(ValueError, match="5 block owners given for 6 blocks"):  # not an IndexError
        placement.owned_by_group(owners[:5], lay, 0)
    local = placement.local_layout(lay, [[0], [], [1], [0]], keep_rest=False)
    assert [(t.name, t.shape) for t in local] == [
        ("blocks0.stat0", (1, 16, 16)), ("blocks0.stat1", (1, 16, 16)), ("blocks0.root0", (1, 16, 16)),
        ("blocks0.root1", (1, 16, 16)),
        ("blocks2.stat0", (1, 8, 8)), ("blocks2.stat1", (1, 16, 16)), ("blocks2.root0", (1, 8, 8)),
        ("blocks2.root1", (1, 16, 16)),
        ("blocks3.stat0", (1, 8, 8)), ("blocks3.stat1", (1, 8, 8)), ("blocks3.root0", (1, 8, 8)),
        ("blocks3.root1", (1, 8, 8))]
    kept = placement.local_layout(lay, [[0, 1], [0], [], []], keep_rest=True)
    assert [t.name for t in kept][-3:] == ["graft_exp_avg_sq", "momentum", "nonfinite_skips"]
    assert [t.shape[0] for t in kept[:-3]] == [2, 2, 2, 2, 1, 1, 1, 1]
    assert all(t.dtype == "float32" for t in kept[:-3])


def test_block_tensors_are_named_stacked_tensors():
    assert placement.is_block_tensor(StateTensor("blocks12.sketch0", (3, 8, 4), "float32"))
    assert not placement.is_block_tensor(StateTensor("blocks0.rho0", (), "float32"))   # a scalar is no stack
    assert not placement.is_block_tensor(StateTensor("graft_blocks", (3,), "float32"))
    assert not placement.is_block_tensor(StateTensor("Blocks0.stat0", (3, 4, 4), "float32"))
    assert placement.block_group(StateTensor("blocks12.sketch0", (3, 8, 4), "float32")) == 12
    assert placement.block_counts([StateTensor("exp_avg", (5,), "float32")]) == []


@pytest.mark.parametrize("dim0,shards,rows", [
    (10, 4, [3, 3, 3, 1]),     # torch.chunk(10 rows, 4): ⌈10/4⌉ = 3 per chunk, the rest last
    (5, 4, [2, 2, 1, 0]),      # 3 non-empty chunks of 2, 2, 1; the fourth rank holds none
    (8, 2, [4, 4]),
    (3, 1, [3]),
    (2, 3, [1, 1, 0]),
])
def test_shards_follow_torch_chunk(dim0, shards, rows):
    assert [placement.chunk_rows(dim0, shards, i) for i in range(shards)] == rows
    assert placement.padded_rows(dim0, shards) == max(rows)
    assert [placement.local_shape((dim0, 7), shards, i) for i in range(shards)] == [(r, 7) for r in rows]


def test_local_shape_keeps_scalars_and_single_shards_whole():
    assert placement.local_shape((), 4, 2) == ()
    assert placement.local_shape((10, 3), 1, 0) == (10, 3)
    assert placement.local_shape((10,), 4, 3) == (1,)


# -------------------------------------------------------------------------------------- kernel calls: Sketchy

def fd(d, k, n, batch=1, every=1):
    return KernelCall("fd_update", (d, k, n), batch, every)


def lowrank(d, k, n, batch=1):
    return KernelCall("lowrank_apply", (d, k, n), batch, 1)


def test_sketchy_kernel_calls_by_hand():
    """Sketchy (Feinberg et al. 2023) per block group and axis, every ``stats_every`` steps: √(1−β2)·G_(i) when
    β2 < 1 (and the middle axis's unfolding copy), the FD update of the rank-min(k, d) sketch with numel/d new
    columns, the copy of U back (d·k) and of σ², ρ (2 passes over k); every step the low-rank apply (and the
    middle axis's copy for it). Frame as the other matrix methods."""
    opts = OptimizerDefaults(merge_dims=1)
    same_calls(kernel_calls((24, 40), MethodConfig(method="sketchy", rank=8), opts),
               [pw(960), pw(1), pw(960, 6), pw(960, 3), pw(960, 2),
                pw(960, 1), fd(24, 8, 40), pw(192), pw(8, 2), lowrank(24, 8, 40),
                pw(960, 1), fd(40, 8, 24), pw(320), pw(8, 2), lowrank(40, 8, 24)])
    # order 3, a running sum stood for by every 2nd gradient (weight 2: scaled), no graft, bfloat16 momentum
    # (lerp and two casts) and the update; rank 5 is cut to 4 on the last axis
    opts = OptimizerDefaults(merge_dims=1, betas=(0.9, 1.0), stats_every=2)
    same_calls(kernel_calls((6, 5, 4), MethodConfig(method="sketchy", rank=5, graft="none", momentum="bfloat16"), opts),
               [pw(120), pw(1), pw(120, 4),
                pw(120, 1, 2), fd(6, 5, 20, 1, 2), pw(30, 1, 2), pw(5, 2, 2), lowrank(6, 5, 20),
                pw(120, 2, 2), fd(5, 5, 24, 1, 2), pw(25, 1, 2), pw(5, 2, 2), pw(120), lowrank(5, 5, 24),
                pw(120, 1, 2), fd(4, 4, 30, 1, 2), pw(16, 1, 2), pw(4, 2, 2), lowrank(4, 4, 30)])


def test_blocked_sketchy_kernel_calls_by_hand():
    """(24, 40) in blocks of 16 (groups (16, 16) × 2, (16, 8), (8, 16) × 2, (8, 8)), rank 16 (cut to 8 on the
    8-wide axes), β2 = 1 and every step: weight 1, so no scaling pass."""
    opts = OptimizerDefaults(merge_dims=1, betas=(0.9, 1.0))
    got = kernel_calls((24, 40), MethodConfig(method="sketchy", rank=16, block_size=16), opts)
    frame = [pw(960), pw(1), pw(960, 6), pw(960, 2), pw(160, 6), pw(512, 3), pw(128, 3), pw(256, 3), pw(64, 3),
             pw(960, 2)]
    groups = ([fd(16, 16, 16, 2), pw(512), pw(32, 2), lowrank(16, 16, 16, 2)] * 2
              + [fd(16, 16, 8), pw(256), pw(16, 2), lowrank(16, 16, 8), fd(8, 8, 16), pw(64), pw(8, 2), lowrank(8, 8, 16)]
              + [fd(8, 8, 16, 2), pw(128), pw(16, 2), lowrank(8, 8, 16, 2),
                 fd(16, 16, 8, 2), pw(512), pw(32, 2), lowrank(16, 16, 8, 2)]
              + [fd(8, 8, 8), pw(64), pw(8, 2), lowrank(8, 8, 8)] * 2)
    same_calls(got, frame + groups)


# ----------------------------------------------------------------------------------------- kernel calls: SOAP

def _soap_axis(count, d, n, se, pf, middle=False):
    """One axis of ``SoapRule.step_param``: three rotations (G', M', N) of the block (d, n, d) each step (with
    the middle axis's unfolding copy each), L += G Gᵀ (d, d, n) every ``stats_every`` steps (its copy too), and
    every ``precondition_frequency`` steps one power iteration L Q (d, d, d), the QR (timed as an eigh root),
    the estimates and permutations (4 passes over d²) and V's permuted copy (2 over the block)."""
    b = count * d * n
    rot = ([pw(b)] if middle else []) + [gemm(d, n, d, count)]
    return rot * 3 + ([pw(b, 1, se)] if middle else []) + [
        gemm(d, d, n, count, se), gemm(d, d, d, count, pf), root(d, count, pf), pw(count * d * d, 4, pf), pw(b, 2, pf)]


def test_soap_kernel_calls_by_hand():
    """SOAP (Vyas et al. 2024): sanitize, momentum and the update, Adam in the rotated basis (7 passes over the
    block) and per axis ``_soap_axis``."""
    opts = OptimizerDefaults(merge_dims=1)
    same_calls(kernel_calls((24, 40), MethodConfig(method="soap"), opts),
               [pw(960), pw(1), pw(960, 2), pw(960, 7)] + _soap_axis(1, 24, 40, 1, 10) + _soap_axis(1, 40, 24, 1, 10))
    opts = OptimizerDefaults(merge_dims=1, stats_every=3, precondition_frequency=4, weight_decay=0.1, nesterov=True)
    same_calls(kernel_calls((6, 5, 4), MethodConfig(method="soap", momentum="none"), opts),
               [pw(120), pw(1), pw(120, 2), pw(120, 7)] + _soap_axis(1, 6, 20, 3, 4)
               + _soap_axis(1, 5, 24, 3, 4, middle=True) + _soap_axis(1, 4, 30, 3, 4))


def test_blocked_packed_soap_kernel_calls_by_hand():
    """Blocks of 16 of (24, 40): the stacking of G and of the two moments (3 passes) and the copy back per block
    (6 × 160); packed statistics (``packing.unpack_calls``): per block group and axis, unpacking the d × d
    statistic (25 pass-equivalents over count·d²/4: three of its ten operations read a transposed view) each step
    and packing it back (7 passes and 12 small operations) when it changes, every ``stats_every`` steps. SOAP keeps no packed roots."""
    opts = OptimizerDefaults(merge_dims=1, stats_every=2, precondition_frequency=6)
    got = kernel_calls((24, 40), MethodConfig(method="soap", block_size=16, packed=True, momentum="bfloat16"), opts)
    frame = [pw(960), pw(1), pw(960, 4), pw(960, 3), pw(160, 6), pw(512, 7), pw(128, 7), pw(256, 7), pw(64, 7)]
    axes = (_soap_axis(2, 16, 16, 2, 6) * 2 + _soap_axis(1, 16, 8, 2, 6) + _soap_axis(1, 8, 16, 2, 6)
            + _soap_axis(2, 8, 16, 2, 6) + _soap_axis(2, 16, 8, 2, 6) + _soap_axis(1, 8, 8, 2, 6) * 2)
    def packed(q, every):  # unpack (25 pass-equivalents), pack (7 passes and 12 small operations) over q = d²/4
        return [pw(q, 25), pw(q, 7, every), pw(1, 12, every)]
    unpack = (packed(128, 2) * 2                                         # (16, 16) × 2: 2·256/4
              + packed(64, 2) + packed(16, 2)                            # (16, 8): 256/4, 64/4
              + packed(32, 2) + packed(128, 2)                           # (8, 16) × 2
              + packed(16, 2) * 2)                                       # (8, 8)
    same_calls(got, frame + axes + unpack)


def test_packed_kradagrad_unpacks_inverse_statistics_and_roots():
    """Packed KrADagrad (issue 19b): both the inverse statistic (repacked every ``stats_every`` steps) and the
    root (every ``precondition_frequency`` steps) of each axis are unpacked every step."""
    opts = OptimizerDefaults(merge_dims=1, stats_every=2, precondition_frequency=6)
    square = kernel_calls((24, 40), MethodConfig(method="kradagrad"), opts)
    got = kernel_calls((24, 40), MethodConfig(method="kradagrad", packed=True), opts)
    same_calls(got, square + [pw(144, 25), pw(144, 7, 2), pw(1, 12, 2), pw(144, 25), pw(144, 7, 6),  # 24²/4
                              pw(1, 12, 6), pw(400, 25), pw(400, 7, 2), pw(1, 12, 2), pw(400, 25),   # 40²/4
                              pw(400, 7, 6), pw(1, 12, 6)])


def test_soap_fallback_is_adam_in_place():
    """A dimension above ``max_precond_dim``: no rotation, Adam's 7 passes on the tensor itself."""
    opts = OptimizerDefaults(max_precond_dim=32)
    same_calls(kernel_calls((300,), MethodConfig(method="soap"), opts), [pw(300), pw(1), pw(300, 2), pw(300, 7)])


# ------------------------------------------------------------------------ workspace: one tensor against MemTracker

def _one_tensor_replay(shape, cfg, dtype, opts):
    from test_step_peak import _replay_vs_tracker  # MemTracker's peak of three real steps, less params/grads/state

    return _replay_vs_tracker([shape], cfg, dtype, opts)


ET_CASES = [(MethodConfig(method="extreme_tensoring", momentum=m), OptimizerDefaults(et_max_dim=md, **kw))
            for m, md, kw in [("none", 8, {}), ("float32", 8, {"nesterov": True}), ("bfloat16", 8, {}),
                              ("float32", 0, {}), ("bfloat16", 5, {"weight_decay": 0.1}),
                              ("none", 64, {"state_dtype": "bfloat16"})]]


@pytest.mark.parametrize("cfg,opts", ET_CASES, ids=lambda x: x.label() if isinstance(x, MethodConfig) else "")
@pytest.mark.parametrize("shape", [(12, 20), (5, 7, 3), (30,), (64, 9)])
def test_extreme_tensoring_workspace_per_tensor(cfg, opts, shape):
    """``extreme_tensoring.workspace_bytes`` for one tensor, float32 and bfloat16 parameters, against torch's
    MemTracker: equal to the byte (its replay has no kernel scratch and no scalar allowance to hide; observed equal
    in every case here)."""
    import torch

    for dtype in (torch.float32, torch.bfloat16):
        predicted, measured = _one_tensor_replay(shape, cfg, dtype, opts)
        assert predicted == measured, (dtype, predicted, measured)


# ------------------------------------------------------------------------- extreme tensoring's mode sizes by hand

@pytest.mark.parametrize("n,primes", [(2, [2]), (12, [2, 2, 3]), (97, [97]), (360, [2, 2, 2, 3, 3, 5]), (1, [])])
def test_prime_factors(n, primes):
    from sketchplan.methods.extreme_tensoring import _prime_factors

    assert _prime_factors(n) == primes


@pytest.mark.parametrize("d,max_dim,dims", [
    (64, 8, [8, 8]),        # 8 = max_dim is allowed: two factors
    (32, 6, [4, 4, 2]),     # no two factors of 32 are both ≤ 6 (2·16, 4·8): three, near-equal
    (60, 8, [5, 4, 3]),     # 60 = 8·7.5 has no two-factor split ≤ 8
    (98, 10, [7, 7, 2]),    # 14·7 fails, 7·7·2 fits
    (776, 64, [97, 8]),     # 776 = 97·8: the prime 97 > 64 stays whole, the rest in one factor
    (7, 4, [7]),            # a prime above max_dim stays whole
    (5, 5, [5]),
    (12, 1, [3, 2, 2]),     # max_dim 1: no factor above 1 fits, every prime whole (was a ZeroDivisionError)
])
def test_split_axis_fewest_near_equal_factors(d, max_dim, dims):
    from sketchplan.methods.extreme_tensoring import split_axis

    assert split_axis(d, max_dim) == dims


def test_tensor_dims_drop_unit_axes_and_split_each_axis():
    from sketchplan.methods.extreme_tensoring import tensor_dims

    assert tensor_dims((1, 64, 1, 5), 8) == (8, 8, 5)
    assert tensor_dims((6, 4), 0) == (24,)        # et_max_dim 0: one mode (diagonal AdaGrad)
    assert tensor_dims((1, 1), 8) == (1,)
    assert tensor_dims((), 8) == (1,)
    assert tensor_dims((4, 6), 1) == (2, 2, 3, 2)  # accepted by OptimizerDefaults (ge=0), so it must work
    layout = METHOD_MODULES["extreme_tensoring"].layout((4, 6), MethodConfig(method="extreme_tensoring", momentum="none"),
                                                        OptimizerDefaults(et_max_dim=1))
    assert [t.shape for t in layout] == [(2,), (2,), (3,), (2,), ()]


# ------------------------------------------------------------------------------------ small corner cases by hand

def test_quantisation_passes_per_codec():
    from sketchplan.methods.compression import quantisation_passes

    assert [quantisation_passes(c) for c in ("int8", "bfloat16", "none")] == [14, 2, 0]


def test_a_one_element_parameter_still_makes_its_passes():
    """Lion on a single element: every pass is over one element (the catalogue's smallest problem)."""
    same_calls(kernel_calls((1,), MethodConfig(method="lion"), OptimizerDefaults()), [pw(1), pw(1), pw(1, 2), pw(1, 2)])


def test_packed_factor_of_two_rows_unpacks_one_element_quarters():
    """A 2 × 2 packed factor: 2²/4 = 1 element per quarter; a 24 × 24 one: 144."""
    opts = OptimizerDefaults(merge_dims=1)
    square = kernel_calls((2, 24), MethodConfig(method="shampoo"), opts)
    got = kernel_calls((2, 24), MethodConfig(method="shampoo", packed=True), opts)
    # per factor: unpack (25 pass-equivalents), pack when it changes (7 passes, 12 small operations); statistics
    # change every step, roots every 10
    same_calls(got, square + [pw(1, 25), pw(1, 7), pw(1, 12), pw(1, 25), pw(1, 7, 10), pw(1, 12, 10),
                              pw(144, 25), pw(144, 7), pw(1, 12), pw(144, 25), pw(144, 7, 10), pw(1, 12, 10)])


def test_block_bytes_are_integers():
    assert all(type(b) is int for b in placement.block_bytes(_blocked_layout()))


# ----------------------------------------------------------------------------------------- Shampoo, by hand

def _shampoo_axis(count, d, n, se, pf, middle=False):
    """One axis of ``ShampooRule``: S += G_(i) G_(i)ᵀ (d, d, n) every ``stats_every`` steps (after the middle
    axis's unfolding copy), the inverse root (variant left to the planner) and its copy every
    ``precondition_frequency`` steps."""
    return ([pw(count * d * n, 1, se)] if middle else []) + [
        gemm(d, d, n, count, se), KernelCall("inv_root", (d,), count, pf), pw(count * d * d, 1, pf)]


def test_shampoo_order_three_kernel_calls_by_hand():
    opts = OptimizerDefaults(merge_dims=1, stats_every=2, precondition_frequency=3)
    got = kernel_calls((6, 5, 4), MethodConfig(method="shampoo", graft="sgd", momentum="none"), opts)
    same_calls(got, [pw(120), pw(1), pw(120, 3), pw(120)]
               + _shampoo_axis(1, 6, 20, 2, 3) + _shampoo_axis(1, 5, 24, 2, 3, middle=True) + _shampoo_axis(1, 4, 30, 2, 3)
               + [gemm(6, 20, 6), pw(120), gemm(5, 24, 5), gemm(4, 30, 4)])


def test_blocked_shampoo_order_three_kernel_calls_by_hand():
    """(8, 6, 4) in blocks of 4: 8 = 4 + 4, 6 = 4 + 2, 4 = 4, so groups (4, 4, 4) × 2 and (4, 2, 4) × 2; stacking
    (2 passes over G, one copy of 192/4 = 48 per block), the norm graft per group."""
    opts = OptimizerDefaults(merge_dims=1, stats_every=2, precondition_frequency=3)
    got = kernel_calls((8, 6, 4), MethodConfig(method="blocked_shampoo", block_size=4, graft="sgd", momentum="none"), opts)
    same_calls(got, [pw(192), pw(1), pw(192, 2), pw(48, 4), pw(128, 3), pw(64, 3), pw(192)]
               + _shampoo_axis(2, 4, 16, 2, 3) + _shampoo_axis(2, 4, 16, 2, 3, middle=True) + _shampoo_axis(2, 4, 16, 2, 3)
               + _shampoo_axis(2, 4, 8, 2, 3) + _shampoo_axis(2, 2, 16, 2, 3, middle=True) + _shampoo_axis(2, 4, 8, 2, 3)
               + [gemm(4, 16, 4, 2), pw(128), gemm(4, 16, 4, 2), gemm(4, 16, 4, 2)]
               + [gemm(4, 8, 4, 2), pw(64), gemm(2, 16, 2, 2), gemm(4, 8, 4, 2)])


def test_soap_with_one_group_of_several_blocks_stacks_them():
    """(32, 32) in blocks of 16: one group (16, 16) × 4, still blocked (stacking: 3 passes over G and 4 copies of
    256 back)."""
    opts = OptimizerDefaults(merge_dims=1)
    got = kernel_calls((32, 32), MethodConfig(method="soap", block_size=16), opts)
    same_calls(got, [pw(1024), pw(1), pw(1024, 2), pw(1024, 3), pw(256, 4), pw(1024, 7)]
               + _soap_axis(4, 16, 16, 1, 10) * 2)


# ------------------------------------------------------------------------------------ packing and identities

def test_changed_names_follow_the_two_schedules():
    """Statistics change on steps 1, 1 + f_s, …; roots on the refresh steps start, start + f_p, … (start = f_p
    for the methods with stored roots when ``start_preconditioning_step`` is −1)."""
    from sketchplan.methods.packing import changed_names

    opts = OptimizerDefaults(stats_every=2, precondition_frequency=3)
    assert [changed_names("shampoo", s, opts) for s in range(1, 8)] == [
        ("stat",), (), ("stat", "root"), (), ("stat",), ("root",), ("stat",)]
    opts = OptimizerDefaults(stats_every=1, precondition_frequency=3, start_preconditioning_step=2)
    assert [changed_names("kradagrad", s, opts) for s in range(1, 6)] == [
        ("inv",), ("inv", "root"), ("inv",), ("inv",), ("inv", "root")]
    assert [changed_names("soap", s, OptimizerDefaults(stats_every=2)) for s in range(1, 4)] == [("stat",), (), ("stat",)]


def test_packed_names_by_method():
    from sketchplan.methods.packing import is_packed_name

    assert is_packed_name("shampoo", "blocks0.stat1") and is_packed_name("shampoo", "blocks2.root0")
    assert is_packed_name("kradagrad", "blocks0.inv10") and not is_packed_name("kradagrad", "blocks0.stat0")
    assert is_packed_name("soap", "blocks1.stat0") and not is_packed_name("soap", "blocks1.basis0")
    assert not is_packed_name("shampoo", "graft_exp_avg_sq") and not is_packed_name("shampoo", "momentum")
    assert not is_packed_name("sketchy", "blocks0.stat0")  # a method without packed factors


@pytest.mark.parametrize("d,shape", [(1, (1, 1)), (2, (3, 1)), (4, (5, 2)), (5, (5, 3)), (6, (7, 3)), (7, (7, 4))])
def test_rectangular_full_packed_shape(d, shape):
    """LAPACK's RFP layout: (d + 1) × d/2 for even d, d × (d + 1)/2 for odd d: d(d + 1)/2 elements either way."""
    from sketchplan.methods.packing import rfp_shape

    assert rfp_shape(d) == shape and shape[0] * shape[1] == d * (d + 1) // 2


def test_kradagrad_starts_from_the_scaled_identity():
    """L̃₀ = I/ε and its root (I/ε)^(1/(2k)) for k axes: ε = 1e-4 gives 1e4 and 1e4^(1/4) = 10 (order 2),
    1e4^(1/6) = 10^(2/3) = 4.6416… (order 3)."""
    from sketchplan.methods import initial_identity

    got = initial_identity((24, 40), MethodConfig(method="kradagrad"), OptimizerDefaults(merge_dims=1, shampoo_eps=1e-4))
    assert set(got) == {"blocks0.inv0", "blocks0.inv1", "blocks0.root0", "blocks0.root1"}
    assert got["blocks0.inv0"] == got["blocks0.inv1"] == pytest.approx(1e4, rel=1e-12)
    assert got["blocks0.root0"] == got["blocks0.root1"] == pytest.approx(10.0, rel=1e-12)
    got = initial_identity((6, 5, 4), MethodConfig(method="kradagrad"), OptimizerDefaults(merge_dims=1, shampoo_eps=1e-4))
    assert got["blocks0.root2"] == pytest.approx(10 ** (2 / 3), rel=1e-12)


def test_soap_nesterov_momentum_adds_its_pass():
    """``momentum_update_calls`` with Nesterov: lerp, the Nesterov combination and the update (3 passes)."""
    opts = OptimizerDefaults(merge_dims=1, nesterov=True)
    same_calls(kernel_calls((24, 40), MethodConfig(method="soap"), opts),
               [pw(960), pw(1), pw(960, 3), pw(960, 7)] + _soap_axis(1, 24, 40, 1, 10) + _soap_axis(1, 40, 24, 1, 10))


# ------------------------------------------------------------------------------------------- blocking by hand

def test_partition_and_group_counts_with_experts_and_fused_segments():
    """(2 experts, 10, 6) in blocks of 4 with the 6 columns fused as 2 | 4: rows 4 + 4 + 2, columns 2 | 4 (each
    segment blocked alone), per expert; groups in order of first appearance, row-major."""
    from sketchplan.methods.blocking import group_counts, partition

    r0, r1, r2, c0, c1 = slice(0, 4), slice(4, 8), slice(8, 10), slice(0, 2), slice(2, 6)
    got = partition((2, 10, 6), 4, batched=True, splits=(None, (2, 4)))
    assert [(g.shape, g.slices) for g in got] == [
        ((4, 2), ((0, r0, c0), (0, r1, c0), (1, r0, c0), (1, r1, c0))),
        ((4, 4), ((0, r0, c1), (0, r1, c1), (1, r0, c1), (1, r1, c1))),
        ((2, 2), ((0, r2, c0), (1, r2, c0))),
        ((2, 4), ((0, r2, c1), (1, r2, c1)))]
    assert group_counts((2, 10, 6), 4, batched=True, splits=(None, (2, 4))) == [
        ((4, 2), 4), ((4, 4), 4), ((2, 2), 2), ((2, 4), 2)]
    # unbatched, no segments: rows 2 + 2 + 1, columns 2 + 1
    got = partition((5, 3), 2)
    assert [(g.shape, g.count) for g in got] == [((2, 2), 2), ((2, 1), 2), ((1, 2), 1), ((1, 1), 1)]
    assert got[1].slices == ((slice(0, 2), slice(2, 3)), (slice(2, 4), slice(2, 3)))
    assert group_counts((5, 3), 2) == [((2, 2), 2), ((2, 1), 2), ((1, 2), 1), ((1, 1), 1)]
    assert group_counts((5, 3), None) == [((5, 3), 1)]


def test_matrix_plan_defaults_are_one_unbatched_unsplit_tensor():
    from sketchplan.methods.blocking import matrix_plan

    mp = matrix_plan((24, 40), None, 1, 8192)
    assert (mp.merged, mp.groups, mp.fallback, mp.batched) == ((24, 40), (((24, 40), 1),), None, False)


def test_sketchy_blocks_only_larger_than_the_rank():
    assert METHOD_MODULES["sketchy"].grid((32,), (16, 32, 64)) == [{"rank": 32}, {"rank": 32, "block_size": 64}]


def test_workspace_defaults_are_float32_parameters_with_kernel_scratch():
    """Every method's ``workspace_bytes(shape, cfg, opts)`` is the figure for a float32 parameter with the kernels'
    internal scratch counted (what the planner uses)."""
    opts = OptimizerDefaults(merge_dims=1)
    for method, module in METHOD_MODULES.items():
        cfg = MethodConfig(method=method, rank=4 if method == "sketchy" else None,
                           block_size=8 if method == "blocked_shampoo" else None)
        for shape in [(12, 20), (30,)]:
            assert module.workspace_bytes(shape, cfg, opts) == module.workspace_bytes(shape, cfg, opts, "float32", True)


# ------------------------------------------------------------------------------------- frame corner cases

def test_adafactor_graft_on_a_matrix_adds_its_vector_updates():
    """The adafactor graft (9 passes over G) on a 24 × 40 matrix also updates its row and column vectors
    (6 passes over the longer, 40); on a vector there are no factors."""
    opts = OptimizerDefaults(merge_dims=1)
    same_calls(kernel_calls((24, 40), MethodConfig(method="shampoo", graft="adafactor"), opts),
               [pw(960), pw(1), pw(960, 9), pw(40, 6), pw(960, 3), pw(960, 2)]
               + _shampoo_axis(1, 24, 40, 1, 10) + _shampoo_axis(1, 40, 24, 1, 10) + [gemm(24, 40, 24), gemm(40, 24, 40)])
    same_calls(kernel_calls((300,), MethodConfig(method="shampoo", graft="adafactor"), opts),
               [pw(300), pw(1), pw(300, 9), pw(300, 3), pw(300, 2)] + _shampoo_axis(1, 300, 1, 1, 10) + [gemm(300, 1, 300)])


def test_one_group_of_several_blocks_is_stacked():
    """(32, 32) in blocks of 16: one group (16, 16) × 4 is still blocked (stacking and 4 copies of 256 back)."""
    opts = OptimizerDefaults(merge_dims=1)
    got = kernel_calls((32, 32), MethodConfig(method="blocked_shampoo", block_size=16, graft="sgd", momentum="none"), opts)
    same_calls(got, [pw(1024), pw(1), pw(1024, 2), pw(256, 4), pw(1024, 3), pw(1024)]
               + _shampoo_axis(4, 16, 16, 1, 10) * 2 + [gemm(16, 16, 16, 4)] * 2)


def test_shampoo_roots_start_as_the_identity():
    from sketchplan.methods import initial_identity

    got = initial_identity((8, 6, 4), MethodConfig(method="blocked_shampoo", block_size=4), OptimizerDefaults(merge_dims=1))
    assert got == {f"blocks{g}.root{i}": 1.0 for g in range(2) for i in range(3)}
    assert initial_identity((30,), MethodConfig(method="adam"), OptimizerDefaults()) == {}


def test_blocked_shampoo_layout_needs_a_block_size():
    cfg = MethodConfig.model_construct(method="blocked_shampoo", block_size=None, graft="adam", momentum="float32",
                                       compress="none", batch_dims=0, splits=None, split_axis=0, packed=False)
    with pytest.raises(ValueError, match="^blocked_shampoo needs a block_size$"):
        METHOD_MODULES["blocked_shampoo"].layout((24, 40), cfg, OptimizerDefaults())


def test_matrix_plan_structure_by_hand():
    """``matrix_plan``'s rule 3 (``methods.blocking``): expert axes are never merged or factored; fused segments keep
    their axes unmerged and are blocked one by one; a single segment, or a split axis out of range, is no split."""
    from sketchplan.methods.blocking import matrix_plan

    mp = matrix_plan((4, 10, 6), 4, 1, 8192, batch_dims=1)          # 4 experts of 10 × 6 in blocks of 4
    assert (mp.merged, mp.batched, mp.groups) == ((4, 10, 6), True, (((4, 4), 8), ((4, 2), 8), ((2, 4), 4), ((2, 2), 4)))
    mp = matrix_plan((10, 6), 4, 1, 8192, splits=(5, 5))               # rows fused 5 | 5: 4 + 1 | 4 + 1
    assert (mp.merged, mp.splits, mp.groups) == ((10, 6), ((5, 5), None),
                                                 (((4, 4), 2), ((4, 2), 2), ((1, 4), 2), ((1, 2), 2)))
    mp = matrix_plan((10, 1, 6), 4, 1, 8192, splits=(2, 4), split_axis=2)  # the unit axis is dropped
    assert (mp.merged, mp.splits, mp.groups) == ((10, 6), (None, (2, 4)),
                                                 (((4, 2), 2), ((4, 4), 2), ((2, 2), 1), ((2, 4), 1)))
    assert matrix_plan((10, 6), None, 1024, 8192, splits=(6,), split_axis=1).merged == (60,)      # one segment
    assert matrix_plan((10, 6), None, 1024, 8192, splits=(3, 3), split_axis=2).merged == (60,)    # no such axis
    assert matrix_plan((2, 10, 6), None, 1024, 8192, batch_dims=1).merged == (2, 60)


def test_changed_names_with_a_stats_period_of_three():
    from sketchplan.methods.packing import changed_names

    opts = OptimizerDefaults(stats_every=3, precondition_frequency=4)
    assert [s for s in range(1, 9) if "stat" in changed_names("shampoo", s, opts)] == [1, 4, 7]
    assert [s for s in range(1, 9) if "root" in changed_names("shampoo", s, opts)] == [4, 8]


def test_matrix_methods_count_the_eigh_scratch():
    """``scratch=True`` adds eigh's LAPACK work buffer (``transients.eigh_scratch_bytes``), which MemTracker cannot
    see: the figure with it is larger for the eigh-based methods."""
    opts = OptimizerDefaults(merge_dims=1)
    for cfg in (MethodConfig(method="shampoo"), MethodConfig(method="blocked_shampoo", block_size=8),
                MethodConfig(method="kradagrad")):
        module = METHOD_MODULES[cfg.method]
        assert module.workspace_bytes((12, 20), cfg, opts, "float32", True) > \
            module.workspace_bytes((12, 20), cfg, opts, "float32", False)


def test_matrix_plan_edges_by_hand():
    """Segments that do not add up, or a lone segment, are no split (the axes merge as usual); fused segments keep
    the axes unmerged even under a large ``merge_dims``; one expert is no batch; a scalar has nothing to merge; a
    dimension equal to ``max_precond_dim`` is still preconditioned; a split axis past the end is ignored."""
    from sketchplan.methods.blocking import matrix_plan

    assert matrix_plan((10, 6), None, 1024, 8192, splits=(3, 4), split_axis=1).merged == (60,)
    assert matrix_plan((10, 6), 4, 1024, 8192, splits=(5, 5)).merged == (10, 6)
    one = matrix_plan((1, 10, 6), None, 1, 8192, batch_dims=1)
    assert (one.merged, one.batched, one.groups) == ((10, 6), False, (((10, 6), 1),))
    scalar = matrix_plan((1, 1), None, 1024, 8192)
    assert (scalar.merged, scalar.groups, scalar.fallback) == ((), (), "scalar")
    assert matrix_plan((24, 40), None, 1, 40).fallback is None
    assert matrix_plan((24, 41), None, 1, 40).fallback == "dim>max_precond_dim"
    assert matrix_plan((2, 10, 6), None, 1024, 8192, batch_dims=1, splits=(3, 3), split_axis=2).merged == (2, 60)
    assert matrix_plan((10, 6), None, 1, 8192, splits=(3, 3), split_axis=2).splits is None
    mp = matrix_plan((2, 10, 6), 4, 1, 8192, batch_dims=1, splits=(2, 4), split_axis=1)
    assert mp.groups == (((4, 2), 4), ((4, 4), 4), ((2, 2), 2), ((2, 4), 2))


def test_replay_counter_refuses_a_size_that_is_no_whole_byte_count():
    """``transients.Live`` stops a replay whose size formula divides where it should multiply or subtracts the
    wrong way round, instead of predicting a fractional or negative peak."""
    from sketchplan.methods.transients import Live

    live = Live()
    assert (live.now, live.peak) == (0, 0)
    live.scratch(40)                 # a kernel's internal scratch counts unless the replay is tensor-level only
    assert (live.now, live.peak) == (0, 40)
    tensors_only = Live(scratch=False)
    tensors_only.scratch(40)
    assert tensors_only.peak == 0
    live = Live()
    assert live.alloc(0) == 0 and live.alloc(24) == 24
    live.free(8)
    assert (live.now, live.peak) == (16, 24)
    for bad in (1.5, 24 / 4, -1, True, None):
        with pytest.raises(TypeError, match=f"non-negative int, got {bad!r}"):
            live.alloc(bad)
        with pytest.raises(TypeError, match=f"non-negative int, got {bad!r}"):
            live.free(bad)
    assert (live.now, live.peak) == (16, 24)


def test_small_rules_by_hand():
    """The one-line rules the layouts and replays stand on, each at the boundary its comparison decides."""
    from sketchplan.methods import adam, blocking, common, muon, workspace_of
    from sketchplan.methods.layout import dtype_bytes

    # the statistics EMA standing for f steps: (β2^f, 1 − β2^f); a running sum adds f times
    assert common.stats_weights(0.9, 3) == pytest.approx((0.729, 0.271), abs=1e-12)
    assert common.stats_weights(1.0, 3) == (1.0, 3.0)
    assert common.bias_correction(0.9, 2) == pytest.approx(0.19) and common.bias_correction(1.0, 5) == 1.0
    # start_preconditioning_step: −1 → the refresh period (stored roots) or 1; 0 and 1 → step 1; 5 → 5
    opts = OptimizerDefaults(precondition_frequency=4)
    assert common.preconditioning_start(opts, True) == 4 and common.preconditioning_start(opts, False) == 1
    for start, first in ((0, 1), (1, 1), (5, 5)):
        assert common.preconditioning_start(OptimizerDefaults(start_preconditioning_step=start), True) == first
    assert common.graft_layout((3, 4), "none", OptimizerDefaults()) == []
    with pytest.raises(ValueError, match="unknown graft 'adagrad'"):
        common.graft_layout((3, 4), "adagrad", OptimizerDefaults())
    with pytest.raises(ValueError, match="unknown dtype 'float8'; use one of float64, float32, bfloat16, "):
        dtype_bytes("float8")
    # merging: right to left while the product stays ≤ merge_dims (equal merges)
    assert blocking.merged_shape((4, 1, 5, 6), 30) == (4, 30)
    assert blocking.merged_shape((4, 5, 6), 29) == (20, 6)      # 6·5 = 30 > 29 stops; then 5·4 = 20 merges
    # a dimension equal to the block size is one block; one more makes a remainder block
    assert blocking.chunks(8, 8) == [8] and blocking.chunks(9, 8) == [8, 1] and blocking.chunks(16, 8) == [8, 8]
    # Adam's chunks: greedy, a chunk may reach the limit exactly; a tensor above it stands alone
    assert adam.chunks([3, 2, 5, 1, 9, 4], limit=5) == [[0, 1], [2], [3], [4], [5]]
    assert adam.chunks([2, 3, 1, 4], limit=6) == [[0, 1, 2], [3]]
    # the fused AdamW kernel: one dtype throughout and β2 < 1 (its update cannot express a running sum)
    f32 = MethodConfig(method="adam")
    assert adam.fused(f32, OptimizerDefaults(), ["float32"])
    assert not adam.fused(f32, OptimizerDefaults(betas=(0.9, 1.0)), ["float32"])
    assert not adam.fused(f32, OptimizerDefaults(), ["bfloat16"])
    # Muon's AdamW fallback keeps the momentum dtype and the compression
    fallback = muon.adam_config(MethodConfig(method="muon", momentum="bfloat16", compress="int8"))
    assert (fallback.method, fallback.momentum, fallback.compress) == ("adam", "bfloat16", "int8")
    # the workspace counts the kernels' scratch unless asked not to
    cfg = MethodConfig(method="shampoo")
    assert workspace_of((40, 30), cfg, OptimizerDefaults(), "float32") == \
        workspace_of((40, 30), cfg, OptimizerDefaults(), "float32", True) > \
        workspace_of((40, 30), cfg, OptimizerDefaults(), "float32", False)
