"""``methods.mesh_placement`` on its own (framework-free, no JAX): every figure below is derived by hand from the
module's rule — elementwise state split like its parameter, any other array split along its first dimension
over all devices when that is a positive multiple of the device count, replicated otherwise — and from JAX's
uneven-sharding convention (shard j of a dimension d split k ways holds [j·⌈d/k⌉, min(d, (j+1)·⌈d/k⌉))).
"""

from __future__ import annotations

import pytest

from sketchplan.methods.layout import StateTensor
from sketchplan.methods.mesh_placement import (elementwise_role, even_tensor_bytes, factor_spec, shard_elements,
                                               spec_axes, spec_problem, tensor_device_bytes)

MESH = {"data": 2, "model": 3}   # 6 devices, row-major: device = 3·data + model


def _t(name, shape, dtype="float32"):
    return StateTensor(name=name, shape=tuple(shape), dtype=dtype)


@pytest.mark.parametrize("name,shape,role", [
    ("exp_avg", (4, 6), "mu"), ("momentum", (4, 6), "mu"), ("exp_avg_sq", (4, 6), "nu"),
    ("graft_exp_avg_sq", (4, 6), "nu"), ("variance", (4, 6), "nu"),
    ("exp_avg", (6, 4), None),          # the name of a moment, but not the parameter's shape
    ("stat", (4, 6), None),             # the parameter's shape, but not an elementwise role
])
def test_elementwise_role(name, shape, role):
    assert elementwise_role(_t(name, shape), (4, 6)) == role


def test_factor_spec_splits_the_first_dimension_over_all_devices_only_when_it_divides():
    assert factor_spec((12, 5, 5), MESH) == (("data", "model"),)    # 12 = 2·6
    assert factor_spec((6, 5), MESH) == (("data", "model"),)        # exactly the device count
    assert factor_spec((9, 5), MESH) == ()                          # 9 is no multiple of 6
    assert factor_spec((3, 5), MESH) == ()                          # fewer blocks than devices
    assert factor_spec((), MESH) == ()                              # a scalar counter
    assert factor_spec((4, 5), {"data": 1}) == ()                   # one device: nothing to split
    assert factor_spec((4,), {"data": 4}) == (("data",),)


def test_shard_elements_by_hand():
    # (7, 4) split over data (2 ways) on dim 0: rows ⌈7/2⌉ = 4 and 3; replicated over model
    assert shard_elements((7, 4), ("data",), MESH) == [16, 16, 16, 12, 12, 12]
    # dim 1 (4 columns) over model (3 ways): c = 2 → columns 2, 2, 0; dim 0 whole
    assert shard_elements((5, 4), (None, "model"), MESH) == [10, 10, 0] * 2
    # dim 0 of 10 over (data, model), 6 ways, data major: c = 2 → 2, 2, 2, 2, 2, 0
    assert shard_elements((10,), (("data", "model"),), MESH) == [2, 2, 2, 2, 2, 0]
    # both dims split: (4, 9) with data on dim 0 and model on dim 1 → 2 × 3 everywhere
    assert shard_elements((4, 9), ("data", "model"), MESH) == [6] * 6
    assert shard_elements((), (), MESH) == [1] * 6                 # a scalar is replicated
    assert shard_elements((3, 2), (), {"x": 1}) == [6]


def test_shard_elements_nesting_order():
    """dim 0 of 8 split 6 ways (c = 2: shards 2, 2, 2, 2, 0, 0). Device f = 3·data + model; with (data, model)
    it holds shard f, with (model, data) shard 2·model + data — so the empty shards land on other devices."""
    assert shard_elements((8,), (("data", "model"),), MESH) == [2, 2, 2, 2, 0, 0]
    assert shard_elements((8,), (("model", "data"),), MESH) == [2, 2, 0, 2, 2, 0]


def test_tensor_device_bytes_by_hand():
    """A (6, 4) parameter split over data on dim 0 (3 rows each), with blocked-Shampoo-like state: a float32 moment (elementwise), a bfloat16 graft second moment (elementwise), stacked
    statistics (6, 2, 2) float32 (6 blocks: split 1 per device), a (4, 3, 3) root (4 blocks: replicated) and an
    int32 step counter ()."""
    layout = [_t("exp_avg", (6, 4)), _t("graft_exp_avg_sq", (6, 4), "bfloat16"), _t("blocks0.stat0", (6, 2, 2)),
              _t("blocks0.root0", (4, 3, 3)), _t("step", (), "int32")]
    per_device = tensor_device_bytes(layout, (6, 4), ("data",), MESH)
    # moment 12·4 + graft 12·2 + one block 4·4 + the whole root 36·4 + the counter 4
    assert per_device == [48 + 24 + 16 + 144 + 4] * 6
    assert even_tensor_bytes(layout, (6, 4), ("data",), MESH) == 48 + 24 + 16 + 144 + 4


def test_even_tensor_bytes_divides_elementwise_state_by_its_splits_only():
    layout = [_t("exp_avg_sq", (4, 9)), _t("stat", (12, 3))]
    # (4, 9) split 2 × 3 = 6 ways: 6 elements; (12, 3) over 6 devices: 2 rows = 6 elements
    assert even_tensor_bytes(layout, (4, 9), ("data", "model"), MESH) == 6 * 4 + 6 * 4
    # split over data only: the moment halves, the stacked array still splits over all 6
    assert even_tensor_bytes(layout, (4, 9), ("data",), MESH) == 18 * 4 + 6 * 4
    # replicated parameter: the moment whole
    assert even_tensor_bytes(layout, (4, 9), (), MESH) == 36 * 4 + 6 * 4
    # a spec that does not divide: no closed form
    assert even_tensor_bytes(layout, (4, 9), (None, "data"), MESH) is None


def test_spec_axes_in_order():
    assert spec_axes((None, ("model", "data"), "pipe")) == ["model", "data", "pipe"]
    assert spec_axes(()) == []


@pytest.mark.parametrize("shape,spec,message", [
    ((4,), (None, "data"), "spec P(None, 'data') has 2 entries for a tensor of 1 dimensions"),
    ((4, 4), (3, None), "spec P(3, None) has the entry 3; each entry is None, an axis name or a tuple of them"),
    ((4, 4), (("data", 3),), "spec P(('data', 3)) has the entry ('data', 3); each entry is None, an axis name or a "
                             "tuple of them"),
    ((4, 4), ("pipe",), "spec P('pipe') names mesh axis 'pipe', which the mesh data=2,model=3 lacks"),
    ((4, 6), ("data", ("model", "data")), "spec P('data', ('model', 'data')) uses mesh axis 'data' twice"),
    ((4, 4), (None, "model"), "dimension 1 of size 4 is split over model (3 devices), which does not divide it"),
    ((6, 4), (("data", "model"),), None),      # 6 = 2·3 divides
    ((5, 4), (None, "data"), None),
    ((5,), (), None),
])
def test_spec_problem_names_the_fault(shape, spec, message):
    assert spec_problem(shape, spec, MESH) == message


def test_spec_problem_multi_axis_split_names_the_product():
    assert spec_problem((4, 8), (("data", "model"),), MESH) == (
        "dimension 0 of size 4 is split over data×model (6 devices), which does not divide it")
