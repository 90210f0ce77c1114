"""Per-rank planning under DDP, ZeRO-1/2, FSDP2 and HSDP (``planner.parallel``): expected bytes derived by hand or
from torch itself (``torch.chunk`` is how ``fully_shard`` splits dim 0), bad input as one sentence."""

import random

import pytest
import torch

from sketchplan.cli import main
from sketchplan.errors import UserError
from sketchplan.methods import state_layout, total_bytes
from sketchplan.methods.layout import MethodConfig, OptimizerDefaults
from sketchplan.methods.placement import block_bytes, chunk_rows, local_layout, owned_by_group, rest_bytes
from sketchplan.planner import make_plan
from sketchplan.planner.analysis import ModelSpec, ParamSpec
from sketchplan.planner.memory import Precision
from sketchplan.planner.parallel import Parallel, Unit, assign_owners, fixed_per_rank, parallel, rank_state
from sketchplan.planner.plan import Plan


def test_chunk_rows_follow_torch_chunk():
    rng = random.Random(7)
    for _ in range(200):
        d0, n = rng.randint(1, 40), rng.randint(1, 9)
        sizes = [c.shape[0] for c in torch.chunk(torch.empty(d0), n)]
        sizes += [0] * (n - len(sizes))
        assert [chunk_rows(d0, n, r) for r in range(n)] == sizes


def _spec():
    return ModelSpec([ParamSpec("layers.0.w", (10, 4)), ParamSpec("layers.0.b", (3,)),
                      ParamSpec("layers.1.w", (10, 4)), ParamSpec("head.w", (5, 6))])


def test_fsdp_fixed_bytes_by_hand():
    spec = _spec()
    f = fixed_per_rank(spec, Precision(), Parallel("fsdp", 4))
    # padded rows ⌈10/4⌉=3, ⌈3/4⌉=1, ⌈5/4⌉=2 → (3·4 + 1 + 3·4 + 2·6) floats
    assert f.params == (12 + 1 + 12 + 12) * 4 == f.grads
    assert f.master == 0
    # units: layers.0 (w, b), layers.1 (w), root (head): unsharded padded bytes ×4 ranks
    unit = {"layers.0": (12 + 1) * 4 * 4, "layers.1": 12 * 4 * 4, "": 12 * 4 * 4}
    assert f.comm == 2 * max(unit.values()) + max(unit.values())
    fm = fixed_per_rank(spec, Precision("bfloat16", None, True), Parallel("fsdp", 4))
    assert fm.params == 37 * 2 and fm.master == 37 * 4


def test_ddp_and_zero_fixed_bytes_by_hand():
    spec = _spec()
    n = 40 + 3 + 40 + 30
    prec = Precision("bfloat16", None, True)
    ddp = fixed_per_rank(spec, prec, Parallel("ddp", 4))
    assert (ddp.params, ddp.grads, ddp.master, ddp.comm) == (2 * n, 2 * n, 4 * n, 2 * n)
    assert fixed_per_rank(spec, Precision(None, None, True), Parallel("ddp", 4)).master == 0  # fp32: no master
    # before the owner assignment: an even share plus the largest tensor (40 elements) bounds ZeRO's owned bytes
    z1 = fixed_per_rank(spec, prec, Parallel("zero1", 4))
    assert (z1.params, z1.grads, z1.master) == (2 * n, 2 * n, -(-4 * n // 4) + 4 * 40)
    z2 = fixed_per_rank(spec, prec, Parallel("zero2", 4))
    assert (z2.grads, z2.master, z2.comm) == (-(-2 * n // 4) + 2 * 40, -(-4 * n // 4) + 4 * 40, 2 * 40)


def test_zero2_gradients_and_masters_follow_tensor_owners_by_hand():
    """ZeRO-2 with the owners a plan gives: a rank holds the bf16 gradients and fp32 masters of its tensors, and
    while it reduces a gradient it does not own, that one too (its largest such gradient)."""
    spec = _spec()  # layers.0.w (10,4) · layers.0.b (3,) · layers.1.w (10,4) · head.w (5,6)
    prec = Precision("bfloat16", None, True)
    cfg = MethodConfig(method="adam")
    configs = {p.name: cfg for p in spec.params}
    rest = {"layers.0.w": 0, "layers.0.b": 1, "layers.1.w": 1, "head.w": 0}
    rs = rank_state(spec, configs, OptimizerDefaults(), Parallel("zero2", 2), owners={}, rest_owner=rest, prec=prec)
    assert rs.grads_by_rank == [2 * (40 + 30), 2 * (3 + 40)]
    assert rs.master_by_rank == [4 * (40 + 30), 4 * (3 + 40)]
    assert rs.inflight_by_rank == [2 * 40, 2 * 40]  # rank 0 reduces layers.1.w, rank 1 layers.0.w
    adam = 2 * 4  # exp_avg + exp_avg_sq, float32 (+ an int32 skip counter per tensor)
    counter = 4
    assert rs.by_rank == [(40 + 30) * adam + 2 * counter, (3 + 40) * adam + 2 * counter]
    f = fixed_per_rank(spec, prec, Parallel("zero2", 2), rs)
    assert (f.params, f.grads, f.master, f.comm) == (2 * 113, 140, 280, 80)
    # the planner's own assignment puts each tensor, blocks and all, on one rank
    blocked = {p.name: MethodConfig(method="blocked_shampoo", block_size=4) for p in spec.params}
    rs = rank_state(spec, blocked, OptimizerDefaults(), Parallel("zero2", 2), prec=prec)
    assert all(set(o) == {rs.rest_owner[t]} for t, o in rs.owners.items())
    assert sorted(rs.grads_by_rank) != [0, 226]  # both ranks own something
    with pytest.raises(UserError, match="blocks on several ranks"):
        rank_state(spec, blocked, OptimizerDefaults(), Parallel("zero2", 2), prec=prec,
                   owners={**rs.owners, "layers.0.w": [0, 1] + rs.owners["layers.0.w"][2:]}, rest_owner=rs.rest_owner)


def test_owner_assignment_places_every_block_once():
    opts = OptimizerDefaults()
    spec = ModelSpec([ParamSpec(f"l{i}.w", (96, 40)) for i in range(3)] + [ParamSpec("b", (7,))])
    cfg = MethodConfig(method="blocked_shampoo", block_size=32)
    configs = {p.name: cfg for p in spec.params}
    for kind in ("ddp", "zero1", "zero2"):
        rs = rank_state(spec, configs, opts, Parallel(kind, 3))
        total_blocks = sum(sum(block_bytes(state_layout(p.shape, cfg, opts))) for p in spec.params)
        rest = sum(rest_bytes(state_layout(p.shape, cfg, opts)) for p in spec.params)
        # each rank's bytes are its local layouts; summed they hold every block once
        per_rank = [0, 0, 0]
        for p in spec.params:
            lay = state_layout(p.shape, cfg, opts)
            for r in range(3):
                owned = owned_by_group(rs.owners.get(p.name, []), lay, r)
                keep = kind == "ddp" or rs.rest_owner[p.name] == r
                per_rank[r] += total_bytes(local_layout(lay, owned, keep))
        assert per_rank == rs.by_rank
        assert sum(rs.by_rank) == total_blocks + rest * (3 if kind == "ddp" else 1)
        assert max(rs.by_rank) < total_blocks + rest  # really spread


def test_assignment_balances_time_not_only_bytes():
    # equal bytes, one unit 10× slower: counting bytes alone splits 6/5 units and leaves a 15 s vs 5 s rank;
    # balancing both keeps the slow rank lighter (minimax of the normalised loads: 13 s/400 B vs 7 s/700 B)
    units = [Unit("a", 0, 100, 10.0)] + [Unit("b", j, 100, 1.0) for j in range(10)]
    owner, loads_b, loads_s = assign_owners(units, 2)
    assert sorted(loads_s) == [7.0, 13.0] and sorted(loads_b) == [400, 700]
    assert loads_s[owner[0]] == 13.0
    # equal units: equal counts
    owner, loads_b, loads_s = assign_owners([Unit("c", j, 8, 1.0) for j in range(9)], 3)
    assert loads_b == [24, 24, 24] and loads_s == [3.0, 3.0, 3.0]


def test_world_one_is_unchanged():
    spec = _spec()
    a = make_plan(spec, None)
    b = make_plan(spec, None, world_size=1, parallelism="fsdp")
    assert a.totals == b.totals and b.settings.parallelism == "none"
    assert a.totals.state_bytes_per_rank is None


def test_fsdp_plan_state_is_the_local_shards():
    spec = ModelSpec([ParamSpec(f"layers.{i}.w", (64, 48)) for i in range(2)] + [ParamSpec("head", (9, 16))])
    plan = make_plan(spec, None, world_size=4, parallelism="fsdp", methods=["blocked_shampoo", "adam"],
                     block_sizes=[16])
    opts = plan.defaults
    expect = [0] * 4
    for e in plan.tensors:
        for r in range(4):
            local = (chunk_rows(e.shape[0], 4, r),) + tuple(e.shape[1:])
            expect[r] += total_bytes(state_layout(local, e.config(), opts)) if local[0] else 0
    assert plan.totals.state_bytes_by_rank == expect
    assert plan.totals.state_bytes_per_rank == max(expect)
    t = plan.totals
    assert t.peak_bytes == t.peak_bytes_per_rank == (t.params_bytes_per_rank + t.grads_bytes_per_rank
                                                      + t.master_bytes_per_rank + t.comm_bytes_per_rank
                                                      + t.state_bytes_per_rank + t.workspace_bytes)


def test_bad_parallel_settings_are_one_sentence():
    with pytest.raises(UserError, match="does not divide"):
        parallel("hsdp", 8, 3)
    with pytest.raises(UserError, match="needs --shard-group"):
        parallel("hsdp", 8)
    with pytest.raises(UserError, match="contradicts"):
        parallel("fsdp", 8, shard_optimizer_state=True)
    assert parallel(None, 8, shard_optimizer_state=True).kind == "zero1"
    assert parallel(None, 8).kind == "ddp"


def test_cli_bad_shard_group_writes_nothing(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    code = main(["plan", "--model", "examples.models:mlp", "--memory-budget", "64MiB", "--world-size", "8",
                 "--parallelism", "hsdp", "--shard-group", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "does not divide" in err and "Traceback" not in err
    assert not out.exists()


def test_readme_multi_gpu_example(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    code = main(["plan", "--model", "llama-70b", "--memory-budget", "80GiB", "--world-size", "64", "--parallelism",
                 "fsdp", "--param-dtype", "bfloat16", "--master-weights", "--reserve", "20GiB", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    plan = Plan.load(out)
    t = plan.totals
    assert plan.settings.parallelism == "fsdp" and plan.settings.world_size == 64
    assert t.peak_bytes_per_rank <= 60 * 2**30
    # each rank holds ~1/64 of the bf16 parameters (padded), far from the whole model
    assert t.params_bytes / 64 <= t.params_bytes_per_rank < t.params_bytes / 60
    assert "per rank (fsdp, 64 ranks)" in text
    assert main(["show", str(out)]) == 0
    assert "per rank (fsdp, 64 ranks)" in capsys.readouterr().out
    assert main(["check", str(out)]) == 0
    assert "predicted peak per rank (fsdp, 64 ranks)" in capsys.readouterr().out


def test_update_keeps_the_parallelism(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["plan", "--model", "examples.models:mlp", "--memory-budget", "64MiB", "--world-size", "4",
                 "--parallelism", "zero2", "--out", str(out)]) == 0
    before = Plan.load(out)
    assert main(["plan", "--update", str(out)]) == 0
    after = Plan.load(out)
    assert (after.settings.parallelism, after.settings.world_size) == ("zero2", 4)
    assert after.totals == before.totals
    assert [e.owner for e in after.tensors] == [e.owner for e in before.tensors]
    capsys.readouterr()
