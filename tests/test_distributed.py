"""Multi-process training on CPU with gloo (``torch.multiprocessing.spawn``): every method under DDP, ZeRO-1, ZeRO-2
and FSDP2 (``fully_shard``) matches a single-process run written without distributed code (same seed, same data
split) over 20 steps; each rank allocates exactly the plan's per-rank state; ranks stay in sync; a DCP checkpoint
saved at step 10 resumes to bit-identical parameters at step 20; ``check --measure`` per rank agrees. HSDP runs on
4 ranks (every method under FSDP2 there too). One spawn per world size keeps it fast. Under ZeRO-2 each rank holds,
after every backward, exactly the gradients of the tensors it owns (the plan's ``grads_bytes_by_rank``) and no
other; bfloat16 models with fp32 master weights (under ZeRO-1/2 on the owner, under FSDP2 per local shard) match a
reference written in ``dist_workers.bf16_reference``."""

import pytest

import dist_workers as dw

METHODS = ["adam", "shampoo", "blocked_shampoo", "sketchy", "extreme_tensoring", "kradagrad"]
#: Adafactor and Lion under every kind, Muon under ZeRO (FSDP/HSDP refuse it: it orthogonalises whole matrices)
ISSUE19 = [("ddp", "lion"), ("zero1", "adafactor"), ("fsdp", "adafactor"), ("fsdp", "lion"), ("zero1", "muon")]


@pytest.fixture(scope="module")
def two_ranks_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dist2")


@pytest.fixture(scope="module")
def two_ranks(two_ranks_dir):
    resumed = {("ddp", "sketchy"), ("zero1", "shampoo"), ("zero1", "extreme_tensoring"), ("fsdp", "adam"),
               ("fsdp", "shampoo")}
    scenarios = [(kind, m, (kind, m) in resumed) for kind in ("ddp", "zero1", "fsdp") for m in METHODS]
    scenarios += [("ddp", "mixed", False), ("zero1", "mixed", True)]  # methods mixed per tensor (dw.mixed)
    scenarios += [("zero1", "sketchy", "check"), ("fsdp", "shampoo", "check")]
    scenarios += [(k, m, False) for k, m in ISSUE19]
    return dw.spawn(2, scenarios, str(two_ranks_dir))


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    # resume at 4 ranks under FSDP2 and DDP (whose resumed run first rebuilds its buckets: dw.run_scenario)
    scenarios = [("fsdp", m, m == "kradagrad") for m in METHODS]
    scenarios += [("ddp", "adam", False), ("ddp", "sketchy", True), ("ddp", "kradagrad", False),
                  ("zero1", "blocked_shampoo", False), ("zero2", "extreme_tensoring", False),
                  ("hsdp", "sketchy", False)]  # HSDP: 2 replicas × shard groups of 2 (a 2-D device mesh)
    return dw.spawn(4, scenarios, str(tmp_path_factory.mktemp("dist4")))


def _check(reports, world):
    assert len(reports) == world
    for per_rank in zip(*reports):
        if per_rank[0]["kind"].startswith("check-"):  # check --measure on every rank
            for rep in per_rank:
                assert "error" not in rep, rep["error"]
                assert rep["ok"] and rep["measured"] == rep["predicted"], rep
            continue
        for rep in per_rank:
            assert "error" not in rep, rep["error"]
            what = f"{rep['kind']}/{rep['method']} rank {rep['rank']}"
            assert rep["state_bytes"] == rep["predicted_state_bytes"], what
            assert rep["measured"] == rep["state_bytes"], (what, rep["measured"])  # the testing helper agrees
            assert rep["in_sync"], what
            if "resume_bitexact" in rep:
                assert rep["resume_bitexact"], what
            if rep["kind"] == "zero2":  # after every backward: its own tensors' gradients, exactly, and no other
                assert rep["grad_bytes"] == [rep["predicted_grad_bytes"]], (what, rep["grad_bytes"])
                assert rep["foreign_grads"] == [], what
            if "master_bytes" in rep:
                assert rep["master_bytes"] == rep["predicted_master_bytes"] > 0, what
        lead = per_rank[0]
        what = f"{lead['kind']}/{lead['method']}"
        if lead["kind"] == "zero2":  # the plan's per-rank figure is the largest rank's
            assert max(r["grad_bytes"][0] for r in per_rank) == lead["largest_rank_grad_bytes"], what
            assert sum(r["grad_bytes"][0] for r in per_rank) == lead["grad_bytes_whole"], what  # each tensor once
        assert lead["moved"] > 1e-3, what  # it trained
        if lead["method"].endswith("_bf16"):
            assert lead["rounded"], what  # the parameters are their masters rounded to bf16
            if "early_max_abs_err" in lead:  # against bf16_reference: float32 tolerance, then a few lr apart
                assert lead["early_max_abs_err"] < 1e-6, (what, lead["early_max_abs_err"])
                assert lead["max_abs_err"] < 5 * 3e-3, (what, lead["worst"], lead["max_abs_err"])
            else:  # against the single-process optimizer on the same gradients
                assert lead["max_abs_err"] < 1e-6, (what, lead["worst"], lead["max_abs_err"])
            continue
        assert lead["max_rel_err"] < 2e-5, (what, lead["worst"], lead["max_rel_err"])
        elementwise = lead["method"] in ("adam", "extreme_tensoring", "lion", "adafactor")
        if not (elementwise and lead["kind"] == "ddp"):  # DDP keeps element-wise state whole on every rank
            # the state is really spread: no rank holds what one device would
            assert max(r["state_bytes"] for r in per_rank) < lead["single_device_state_bytes"], what


def test_two_ranks_every_method_ddp_zero_fsdp(two_ranks):
    _check(two_ranks, 2)
    seen = {(r["kind"], r["method"]) for r in two_ranks[0] if not r["kind"].startswith("check")} - \
        {("ddp", "mixed"), ("zero1", "mixed")}
    assert seen == {(k, m) for k in ("ddp", "zero1", "fsdp") for m in METHODS} | set(ISSUE19)


@pytest.fixture(scope="module")
def zero2_two_ranks(tmp_path_factory):
    scenarios = [("zero2", m, m in ("shampoo", "sketchy")) for m in METHODS]
    scenarios += [("zero2", "mixed", False), ("zero2", "adam_bf16", True), ("zero2", "shampoo_bf16", False),
                  ("zero1", "adam_bf16", False), ("fsdp", "adam_bf16", False), ("zero2", "sketchy", "check")]
    scenarios += [("zero2", m, False) for m in ("adafactor", "lion", "muon")]
    return dw.spawn(2, scenarios, str(tmp_path_factory.mktemp("zero2")))


def test_two_ranks_zero2_shards_gradients_and_keeps_masters(zero2_two_ranks):
    """ZeRO-2 without DistributedDataParallel: every method matches the single-process run, each rank holds the
    plan's gradient bytes for its own tensors after every backward, resume is bit-exact; bf16 with fp32 masters
    (allocated per rank as planned) matches the reference."""
    _check(zero2_two_ranks, 2)
    seen = {r["method"] for r in zero2_two_ranks[0] if r["kind"] == "zero2"}
    assert seen == set(METHODS) | {"mixed", "adam_bf16", "shampoo_bf16", "adafactor", "lion", "muon"}


def test_two_ranks_fsdp_soap_and_packed_factors(tmp_path):
    """Issue 19b: SOAP and packed Shampoo under FSDP2 (each rank steps its shard with the ordinary rules)."""
    reports = dw.spawn(2, [("fsdp", "soap", False), ("fsdp", "shampoo_packed", False)], str(tmp_path))
    _check(reports, 2)


def test_four_ranks(four_ranks):
    _check(four_ranks, 4)


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _one_rank_fsdp(cfg):
    import torch
    from torch.distributed.fsdp import fully_shard

    import sketchplan
    from sketchplan.planner.make import plan_from_configs

    with torch.device("meta"):
        meta = dw.TinyLM()
    m = dw.model(seed=5)
    for b in m.layers:
        fully_shard(b)
    fully_shard(m)
    return m, sketchplan.build_optimizer(plan_from_configs(meta, cfg, dw.defaults()), m)


def test_fsdp_checkpoint_reshards_from_two_ranks_to_one(two_ranks, two_ranks_dir, one_rank_group):
    """Adam's state under FSDP2 is saved as DTensors: a 2-rank checkpoint loads on 1 rank, bit for bit."""
    import torch

    from sketchplan import checkpoint

    m, opt = _one_rank_fsdp(dw.configs()["adam"])
    checkpoint.load(opt, m, str(two_ranks_dir / "ckpt-fsdp-adam"))
    want = torch.load(two_ranks_dir / "fsdp-adam-step10.pt")
    for n, p in m.named_parameters():
        assert torch.equal(p.full_tensor(), want["params"][n]), n
        assert torch.equal(opt.state[p]["exp_avg_sq"], want["exp_avg_sq"][n]), n
        assert opt.state[p]["step"] == 10


def test_checkpoint_with_per_rank_blocks_refuses_another_world_size(two_ranks, two_ranks_dir, one_rank_group):
    from sketchplan import checkpoint
    from sketchplan.errors import UserError

    m, opt = _one_rank_fsdp(dw.configs()["shampoo"])
    with pytest.raises(UserError, match="per-rank preconditioner state of 2 ranks; resume it on 2 ranks"):
        checkpoint.load(opt, m, str(two_ranks_dir / "ckpt-fsdp-shampoo"))
