"""Train a small transformer on several processes with a sketchplan plan: DDP, ZeRO-1/2 or FSDP2 (under ZeRO-2 the
model is not wrapped in DDP: the optimizer reduces each gradient to the rank that owns the tensor).

    torchrun --nproc-per-node 2 examples/distributed_train.py --parallelism fsdp     # gloo on CPU, NCCL on GPUs
    torchrun --nproc-per-node 2 examples/distributed_train.py --parallelism ddp --plan plan.yaml

Every rank makes the same plan (or loads ``--plan``, written by ``sketchplan plan --world-size N --parallelism
KIND``), wraps the model as the plan says, builds the optimizer with ``sketchplan.build_optimizer``, checks that
its own optimizer state is exactly the plan's per-rank prediction, trains, and saves a
``torch.distributed.checkpoint`` of model and optimizer that ``--resume`` loads.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

import sketchplan
from sketchplan import checkpoint
from sketchplan.testing import assert_rank_matches_plan


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.down(torch.relu(self.up(x)))


class LM(nn.Module):
    def __init__(self, vocab: int = 256, d: int = 64, n_layer: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d) for _ in range(n_layer)])
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.layers:
            x = block(x)
        return self.head(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallelism", default="fsdp", choices=["ddp", "zero1", "zero2", "fsdp"])
    ap.add_argument("--plan", help="a plan written by `sketchplan plan` (default: plan here, 64 MiB per rank)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--checkpoint", default="ckpt-example")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    if args.plan:
        plan = sketchplan.Plan.load(args.plan)
    else:
        with torch.device("meta"):
            meta = LM()
        plan = sketchplan.make_plan(meta, "64MiB", world_size=world, parallelism=args.parallelism,
                                    methods=["adam", "blocked_shampoo", "sketchy"], block_sizes=[64],
                                    ranks=[16], hardware=None)

    torch.manual_seed(0)
    model = LM().to(device)
    if plan.settings.parallelism in ("fsdp", "hsdp"):
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        wrapped = model
    elif plan.settings.parallelism == "zero2":
        wrapped = model  # not DDP: the optimizer reduces each gradient to the rank that owns the tensor
    else:
        wrapped = nn.parallel.DistributedDataParallel(model)
    opt = sketchplan.build_optimizer(plan, wrapped)
    if args.resume:
        checkpoint.load(opt, wrapped, args.checkpoint)

    g = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, 256, (4, 33), generator=g).to(device)
        logits = wrapped(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1:
            m = assert_rank_matches_plan(opt, wrapped, plan)
            print(f"rank {rank}: optimizer state {m['measured_bytes']:,} B = plan's {m['predicted_bytes']:,} B")
            if plan.totals.grads_bytes_by_rank and plan.settings.parallelism == "zero2":
                held = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)  # after step: owned
                want = plan.totals.grads_bytes_by_rank[rank]
                assert held == want, (held, want)
                print(f"rank {rank}: gradients {held:,} B = plan's {want:,} B (the tensors it owns)")
        if rank == 0 and step % 5 == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    checkpoint.save(opt, wrapped, args.checkpoint)
    dist.barrier()  # no rank tears gloo down while a peer still sends checkpoint metadata
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Everything is written and the process group destroyed. Under CPU load, 1 run in 8-9 of this example on 2
    # gloo ranks aborted after that, with no Python frame left ("terminate called without an active exception":
    # a native thread still joinable when the process's static objects were destroyed), so leave directly.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
