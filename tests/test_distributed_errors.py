"""Plans that do not match the running process group are refused in one sentence (a single-rank gloo group in
this process; the multi-process behaviour is in test_distributed.py), and FSDP2 on one rank trains."""

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import dist_workers as dw
import sketchplan
from sketchplan.cli import main
from sketchplan.errors import UserError
from sketchplan.methods.layout import MethodConfig
from sketchplan.planner.make import plan_from_configs

CFG = MethodConfig(method="blocked_shampoo", block_size=8)


def _meta():
    with torch.device("meta"):
        return dw.TinyLM()


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_multi_rank_plan_without_process_group():
    plan = plan_from_configs(_meta(), CFG, world_size=2, parallelism="ddp")
    with pytest.raises(UserError, match="torch.distributed is not initialized"):
        sketchplan.build_optimizer(plan, dw.model())


def test_world_size_mismatch(one_rank_group):
    plan = plan_from_configs(_meta(), CFG, world_size=2, parallelism="zero1")
    with pytest.raises(UserError, match="world size 2 but the process group has 1 ranks"):
        sketchplan.build_optimizer(plan, nn.parallel.DistributedDataParallel(dw.model()))


def test_parallelism_mismatch(one_rank_group):
    from torch.distributed.fsdp import fully_shard

    fsdp_plan = plan_from_configs(_meta(), CFG, world_size=2, parallelism="fsdp")
    with pytest.raises(UserError, match="not DTensors; apply torch.distributed.fsdp.fully_shard"):
        sketchplan.build_optimizer(fsdp_plan, nn.parallel.DistributedDataParallel(dw.model()))
    m = dw.model()
    fully_shard(m)
    with pytest.raises(UserError, match="made for world size 2 but the model is sharded over a 1-rank mesh"):
        sketchplan.build_optimizer(fsdp_plan, m)
    ddp_plan = plan_from_configs(_meta(), CFG, world_size=2, parallelism="ddp")
    with pytest.raises(UserError, match="world size 2 but the process group has 1 ranks"):
        sketchplan.build_optimizer(ddp_plan, m)


def test_fsdp_on_one_rank_trains_like_a_single_device(one_rank_group):
    from torch.distributed.fsdp import fully_shard

    plan = plan_from_configs(_meta(), CFG, dw.defaults())
    ref = dw.model()
    m = dw.model()
    fully_shard(m)
    opts = [sketchplan.build_optimizer(plan, ref), sketchplan.build_optimizer(plan, m)]
    for batch in dw.batches(3):
        for net, opt in zip((ref, m), opts):
            opt.zero_grad()
            dw.loss_of(net, batch).backward()
            opt.step()
    for (n, a), (_, b) in zip(ref.named_parameters(), m.named_parameters()):
        torch.testing.assert_close(a, b.full_tensor(), rtol=1e-5, atol=1e-6, msg=n)
    assert dw.state_bytes(opts[0]) == dw.state_bytes(opts[1]) == plan.totals.state_bytes


def test_cli_measure_multi_rank_plan_in_one_process(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["plan", "--model", "examples.models:mlp", "--world-size", "2", "--parallelism", "zero1",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    code = main(["check", str(out), "--measure"])
    err = capsys.readouterr().err
    assert code == 2 and "torchrun --nproc-per-node 2" in err and "Traceback" not in err


def test_zero2_refuses_a_ddp_wrapped_model(one_rank_group):
    plan = plan_from_configs(_meta(), CFG, world_size=2, parallelism="zero2")
    with pytest.raises(UserError, match="zero2 plan reduces each gradient to its owner rank itself; pass the model "
                                        "unwrapped"):
        sketchplan.build_optimizer(plan, nn.parallel.DistributedDataParallel(dw.model()))


def test_zero2_refuses_a_second_backward_before_step(one_rank_group):
    """The hook reduces during backward: accumulating a second backward would add to a reduced gradient."""
    from sketchplan.methods.layout import OptimizerDefaults
    from sketchplan.optimizers.torch import group_options
    from sketchplan.optimizers.torch.distributed import build_distributed

    m = dw.model()
    adam, opts = MethodConfig(method="adam"), OptimizerDefaults()
    names = {id(p): n for n, p in m.named_parameters()}
    opt = build_distributed([{"params": list(m.parameters()), **group_options(adam, opts)}], adam, opts,
                            kind="zero2", world=1, names=names, owners={}, rest_owner={n: 0 for n in names.values()})
    batch = dw.batches(1)[0]
    dw.loss_of(m, batch).backward()
    assert all(p.grad is not None for p in m.parameters())  # the only rank owns everything
    with pytest.raises(UserError, match="call step\\(\\) \\(and zero_grad\\) after every backward"):
        dw.loss_of(m, batch).backward()
    opt.remove_hooks()
