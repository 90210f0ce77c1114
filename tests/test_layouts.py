"""State layouts against hand-derived expectations from docs/algorithms.md (shapes, and each method's state)."""

import math

import pytest

from sketchplan.methods import MethodConfig, OptimizerDefaults, state_layout, total_bytes
from sketchplan.methods.blocking import merged_shape, partition
from sketchplan.methods.extreme_tensoring import tensor_dims

F32, I32 = "float32", "int32"
SKIP = ("nonfinite_skips", (), I32)
OPTS = OptimizerDefaults()  # merge_dims 1024, max_precond_dim 8192


def as_set(layout):
    return sorted((t.name, t.shape, t.dtype) for t in layout)


def nbytes(rows):
    size = {"float32": 4, "int32": 4, "bfloat16": 2}
    return sum(math.prod(s) * size[d] for _, s, d in rows)


def adam_graft_mom(shape):
    return [("graft_exp_avg_sq", shape, F32), ("momentum", shape, F32), SKIP]


def shampoo_blocks(groups, names=("stat", "root")):
    rows = []
    for g, (bshape, count) in enumerate(groups):
        for i, d in enumerate(bshape):
            rows += [(f"blocks{g}.{names[0]}{i}", (count, d, d), F32), (f"blocks{g}.{names[1]}{i}", (count, d, d), F32)]
    return rows


def sketchy_blocks(groups, k):
    rows = []
    for g, (bshape, count) in enumerate(groups):
        for i, d in enumerate(bshape):
            ki = min(k, d)
            rows += [(f"blocks{g}.U{i}", (count, d, ki), F32), (f"blocks{g}.sig2_{i}", (count, ki), F32),
                     (f"blocks{g}.rho{i}", (count,), F32)]
    return rows


# shape -> (merged shape, blocks at B=1024 as [(block shape, count)]) derived by hand
CASES = {
    (768, 2304): ((768, 2304), [((768, 1024), 2), ((768, 256), 1)]),
    (50257, 768): ((50257, 768), [((1024, 768), 49), ((81, 768), 1)]),
    (4096, 11008): ((4096, 11008), [((1024, 1024), 40), ((1024, 768), 4)]),
    (64, 3, 7, 7): ((64, 147), [((64, 147), 1)]),
    (768,): ((768,), [((768,), 1)]),
    (): ((), []),
}


@pytest.mark.parametrize("shape", list(CASES))
def test_merge_and_block_rules(shape):
    merged, blocks = CASES[shape]
    assert merged_shape(shape, 1024) == merged
    got = [(g.shape, g.count) for g in partition(merged, 1024)] if merged else []
    assert got == blocks


def test_merge_examples_from_algorithms():
    assert merged_shape((64, 3, 3, 3), 1024) == (64, 27)
    assert merged_shape((512, 256, 3, 3), 1024) == (512, 256, 9)
    assert merged_shape((16, 10), 1024) == (160,)
    assert merged_shape((1, 1), 1024) == ()


@pytest.mark.parametrize("shape", list(CASES))
def test_adam(shape):
    rows = [("exp_avg", shape, F32), ("exp_avg_sq", shape, F32), SKIP]
    lay = state_layout(shape, MethodConfig(method="adam"), OPTS)
    assert as_set(lay) == sorted(rows)
    assert total_bytes(lay) == 8 * math.prod(shape) + 4


@pytest.mark.parametrize("shape", list(CASES))
def test_shampoo(shape):
    merged, _ = CASES[shape]
    if not merged or max(merged) > 8192:  # scalar or a dimension above max_precond_dim: graft fallback
        rows = adam_graft_mom(shape)
    else:
        rows = shampoo_blocks([(merged, 1)]) + adam_graft_mom(shape)
    lay = state_layout(shape, MethodConfig(method="shampoo"), OPTS)
    assert as_set(lay) == sorted(rows)
    assert total_bytes(lay) == nbytes(rows)


@pytest.mark.parametrize("shape", list(CASES))
def test_blocked_shampoo(shape):
    merged, blocks = CASES[shape]
    rows = (shampoo_blocks(blocks) if merged else []) + adam_graft_mom(shape)
    lay = state_layout(shape, MethodConfig(method="blocked_shampoo", block_size=1024), OPTS)
    assert as_set(lay) == sorted(rows)
    if shape == (4096, 11008):  # ≈ 4·numel floats for the preconditioner with near-square blocks
        pre = total_bytes(lay) - 8 * math.prod(shape) - 4
        assert 3.9 * 4 * math.prod(shape) < pre < 4.1 * 4 * math.prod(shape)


@pytest.mark.parametrize("shape", list(CASES))
def test_sketchy_sublinear_config(shape):
    merged, _ = CASES[shape]
    cfg = MethodConfig(method="sketchy", rank=256, graft="adafactor", momentum="bfloat16")
    numel = math.prod(shape)
    if len(merged) >= 2:
        graft = [("graft_row", (merged[0],), F32), ("graft_col", (numel // merged[0],), F32)]
    else:
        graft = [("graft_v", (numel,), F32)]
    mom = [("momentum", shape, "bfloat16"), SKIP]
    pre = sketchy_blocks([(merged, 1)], 256) if merged and max(merged) <= 8192 else []
    lay = state_layout(shape, cfg, OPTS)
    assert as_set(lay) == sorted(pre + graft + mom)
    assert total_bytes(lay) == nbytes(pre + graft + mom)


def test_sketchy_blocked_and_sgd_no_momentum_is_sublinear():
    shape = (4096, 11008)
    cfg = MethodConfig(method="sketchy", rank=128, block_size=1024, graft="sgd", momentum="none")
    lay = state_layout(shape, cfg, OPTS)
    rows = sketchy_blocks(CASES[shape][1], 128) + [SKIP]
    assert as_set(lay) == sorted(rows)
    assert total_bytes(lay) < 0.3 * 4 * math.prod(shape)  # far below one float per parameter


def test_kradagrad_like_shampoo():
    shape = (768, 2304)
    lay = state_layout(shape, MethodConfig(method="kradagrad"), OPTS)
    rows = shampoo_blocks([((768, 2304), 1)], names=("inv", "root")) + adam_graft_mom(shape)
    assert as_set(lay) == sorted(rows)


def test_extreme_tensoring_dims_by_hand():
    # 768 = 24·32, 2304 = 48·48: fewest near-equal factors ≤ 64 per axis
    assert sorted(tensor_dims((768, 2304), 64)) == sorted((32, 24, 48, 48))
    assert tensor_dims((768, 2304), 0) == (768 * 2304,)  # p = 1
    # 50257 = 29·1733 (1733 prime stays whole), 768 = 24·32
    assert sorted(tensor_dims((50257, 768), 64)) == sorted((1733, 29, 32, 24))
    lay = state_layout((768, 2304), MethodConfig(method="extreme_tensoring", momentum="none"), OPTS)
    assert total_bytes(lay) == 4 * (32 + 24 + 48 + 48) + 4


@pytest.mark.parametrize("d", [2, 17, 64, 97, 360, 1000, 4096, 50257, 65536])
def test_extreme_tensoring_factor_properties(d):
    dims = tensor_dims((d,), 64)
    assert math.prod(dims) == d
    for f in dims:
        assert f <= 64 or all(f % p for p in range(2, int(f ** 0.5) + 1))  # ≤ max or prime


def test_state_dtype_and_momentum_dtypes_are_counted():
    opts = OptimizerDefaults(state_dtype="bfloat16")
    lay = state_layout((256, 512), MethodConfig(method="shampoo", momentum="bfloat16"), opts)
    assert all(t.dtype == "bfloat16" for t in lay if t.name != "nonfinite_skips")
    assert total_bytes(lay) == 2 * 2 * (256**2 + 512**2) + 2 * 2 * 256 * 512 + 4


def test_method_config_validation():
    with pytest.raises(ValueError):
        MethodConfig(method="sketchy")
    with pytest.raises(ValueError):
        MethodConfig(method="blocked_shampoo")
    with pytest.raises(ValueError):
        MethodConfig(method="adam", rank=4)
    with pytest.raises(ValueError):
        MethodConfig(method="sketchy", rank=0)
