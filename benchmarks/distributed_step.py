"""Blocked-Shampoo step time with its preconditioner work spread over 1, 2 and 4 ranks (gloo on CPU, DDP owner
placement: each rank refreshes the roots of the blocks the plan assigns it, one all_gather shares the directions).

Every timed step refreshes every root (``precondition_frequency = 1``), the step the spreading is for. The same
model and the same gradients on every world size; world size 1 is the plain single-process optimizer. Rounds are
interleaved (1, 2, 4, 1, 2, 4, ...); per round and world size the figure is the median step over the timed steps of
the slowest rank (a step ends when the all_gather does). Results: min/median/max over rounds and the ratio of
medians to world size 1, with the machine's load average from ``uptime`` before and after.

Usage: PYTHONPATH=src python benchmarks/distributed_step.py [--layers 8] [--dim 512] [--block 256] [--rounds 3]
Writes benchmarks/results/distributed_step.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def build(layers: int, dim: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(dim, dim, bias=False) for _ in range(layers)])


def plan_for(world: int, layers: int, dim: int, block: int):
    from sketchplan.methods.layout import MethodConfig, OptimizerDefaults
    from sketchplan.planner.make import plan_from_configs

    with torch.device("meta"):
        meta = build(layers, dim)
    cfg = MethodConfig(method="blocked_shampoo", block_size=block, graft="adam", momentum="float32")
    opts = OptimizerDefaults(precondition_frequency=1, shampoo_eps=1e-6)
    return plan_from_configs(meta, cfg, opts, world_size=world, parallelism="ddp" if world > 1 else None)


def worker(rank: int, world: int, port: int, args: dict, out: str) -> None:
    import sketchplan

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = build(args["layers"], args["dim"])
    plan = plan_for(world, args["layers"], args["dim"], args["block"])
    opt = sketchplan.build_optimizer(plan, model)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    opt.step()  # allocation and first roots, not timed
    times, cpu = [], []
    for _ in range(args["steps"]):
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        opt.step()
        cpu.append(time.process_time() - c0)  # this rank's own work (1 thread), before waiting for the others
        dist.barrier()
        times.append(time.perf_counter() - t0)
    gathered = [None] * world
    dist.all_gather_object(gathered, (times, cpu))
    if rank == 0:
        slowest = [max(ts) for ts in zip(*(g[0] for g in gathered))]
        busiest = [max(cs) for cs in zip(*(g[1] for g in gathered))]
        Path(out).write_text(json.dumps([statistics.median(slowest), statistics.median(busiest)]))
    dist.barrier()  # gloo aborts a rank torn down while a peer still sends
    dist.destroy_process_group()


def run(world: int, args: dict) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "t.json")
        mp.spawn(worker, args=(world, port, args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worlds", default="1,2,4")
    a = ap.parse_args()
    args = dict(layers=a.layers, dim=a.dim, block=a.block, steps=a.steps)
    worlds = [int(w) for w in a.worlds.split(",")]
    load_before = uptime()
    samples: dict[int, list[float]] = {w: [] for w in worlds}
    cpus: dict[int, list[float]] = {w: [] for w in worlds}
    for r in range(a.rounds):
        for w in worlds:
            wall, cpu = run(w, args)
            samples[w].append(wall)
            cpus[w].append(cpu)
            print(f"round {r} world {w}: {wall * 1e3:.1f} ms wall, busiest rank {cpu * 1e3:.1f} ms CPU", flush=True)
    load_after = uptime()
    from sketchplan.planner.analysis import analyze
    from sketchplan.planner.parallel import Parallel, rank_state

    base = statistics.median(samples[worlds[0]])
    cbase = statistics.median(cpus[worlds[0]])
    blocks = a.layers * (a.dim // a.block) ** 2
    lines = [
        f"Blocked Shampoo (B={a.block}, graft adam, fp32 momentum, every step a root refresh) on {a.layers} "
        f"{a.dim}×{a.dim} matrices ({blocks} blocks of {a.block}×{a.block}), DDP owner placement over gloo ranks on "
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread per rank, torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}. Step time of the slowest rank, median of {a.steps} steps "
        f"per round; {a.rounds} interleaved rounds (min / median / max). Load average before: {load_before}; "
        f"after: {load_after}.",
        "",
        "Wall: the step as training sees it. CPU: the busiest rank's own CPU time in the step (1 thread; excludes "
        "waiting for other ranks and for a core), which shows how the root-refresh work is divided even when the "
        "machine has no free core for the extra ranks.",
        "",
        "| ranks | wall ms min | median | max | wall ÷ 1 rank | busiest rank CPU ms (median) | CPU ÷ 1 rank | "
        "ideal 1/N | planned largest share of predicted work |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in worlds:
        v = samples[w]
        with torch.device("meta"):
            spec = analyze(build(a.layers, a.dim))
        plan = plan_for(w, a.layers, a.dim, a.block)
        cfgs = {e.name: e.config() for e in plan.tensors if e.config() is not None}
        share = 1.0
        if w > 1:
            rs = rank_state(spec, cfgs, plan.defaults, Parallel("ddp", w))
            share = max(rs.seconds_by_rank) / sum(rs.seconds_by_rank)
        c = statistics.median(cpus[w])
        lines.append(f"| {w} | {min(v) * 1e3:.1f} | {statistics.median(v) * 1e3:.1f} | {max(v) * 1e3:.1f} | "
                     f"{statistics.median(v) / base:.2f} | {c * 1e3:.1f} | {c / cbase:.2f} | {1 / w:.2f} | "
                     f"{share:.2f} |")
    lines += ["", "Ranks beyond the machine's free cores share them: on a 2-core machine 4 ranks cannot run their "
              "roots in parallel, so the 4-rank ratio there measures time-sharing, not the placement."]
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(__file__).parent / "results" / "distributed_step.md").write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()
