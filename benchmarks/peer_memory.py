"""Per-rank memory predictions against peers: DeepSpeed's ZeRO estimators and torch's ``FSDPMemTracker`` measuring a
real 2-rank FSDP2 step (gloo on CPU).

1. DeepSpeed (``estimate_zero2_model_states_mem_needs_all_cold`` / ``estimate_zero3_…``, no offload): mixed-precision
   AdamW (16-bit parameters and gradients, fp32 master weights and moments) on presets at 8 ranks, against
   sketchplan's per-rank parameters + gradients + master + state (all Adam, ``--param-dtype bfloat16
   --master-weights``), without and with sketchplan's buffers (DeepSpeed counts no buffers).
2. ``FSDPMemTracker`` (torch.distributed._tools): a wide MLP (each layer its own ``fully_shard`` unit), one token of
   batch so that activations are negligible, our optimizer built from an FSDP plan, one warm-up step then one
   tracked step; its peak on rank 0 against the plan's ``peak_bytes_per_rank`` (which leaves activations to
   ``--reserve``; the tracker's activation bytes are shown).

Usage: PYTHONPATH=src:/path/to/deepspeed-no-deps python benchmarks/peer_memory.py
(DeepSpeed without its dependencies: ``pip install --no-deps --target DIR deepspeed hjson py-cpuinfo msgpack psutil
einops ninja``; see benchmarks/requirements.txt). Writes benchmarks/results/peer_memory.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GiB = 2**30


def deepspeed_rows(presets, world: int) -> list[str]:
    import sketchplan
    from sketchplan.planner.sources import load_spec

    with contextlib.redirect_stdout(io.StringIO()):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    rows = []
    for name in presets:
        spec = load_spec(name)
        n = spec.n_trainable
        largest = max(p.numel for p in spec.trainable)
        for kind in ("zero2", "fsdp"):
            plan = sketchplan.make_plan(spec, None, methods=["adam"], momenta=["float32"], world_size=world,
                                        parallelism=kind, param_dtype="bfloat16", master_weights=True)
            t = plan.totals
            states = t.params_bytes_per_rank + t.grads_bytes_per_rank + t.master_bytes_per_rank + \
                t.state_bytes_per_rank
            if kind == "zero2":
                _, ds = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=world, num_nodes=1,
                                                              cpu_offload=False)
                label = "ZeRO-2 `estimate_zero2`"
            else:
                _, ds, _ = estimate_zero3_model_states_mem_needs(n, largest, num_gpus_per_node=world, num_nodes=1,
                                                                 cpu_offload=False, cpu_offload_params=False,
                                                                 zero_init=True)
                label = "ZeRO-3 `estimate_zero3` vs FSDP"
            rows.append(f"| {name} ({n / 1e9:.2f} B) | {label} | {ds / GiB:.2f} | {states / GiB:.2f} | "
                        f"{states / ds:.3f} | {t.peak_bytes_per_rank / GiB:.2f} |")
    return rows


def _tracker_worker(rank: int, world: int, port: int, out: str, method: str) -> None:
    import torch.distributed as dist
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.fsdp import fully_shard

    import sketchplan
    from sketchplan.methods.layout import MethodConfig
    from sketchplan.planner.make import plan_from_configs

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(1024, 1024) for _ in range(6)])

        def forward(self, x):
            for layer in self.layers:
                x = torch.relu(layer(x))
            return x

    def build():
        torch.manual_seed(0)
        return MLP()

    def forward(m, x):
        return m(x)

    with torch.device("meta"):
        meta = build()
    cfg = {"adam": MethodConfig(method="adam"),
           "blocked_shampoo": MethodConfig(method="blocked_shampoo", block_size=256, graft="adafactor",
                                           momentum="bfloat16")}[method]
    plan = plan_from_configs(meta, cfg, world_size=world, parallelism="fsdp")
    m = build()
    for layer in m.layers:
        fully_shard(layer)
    fully_shard(m)
    opt = sketchplan.build_optimizer(plan, m)
    x = torch.randn(1, 1024)
    forward(m, x).sum().backward()
    opt.step()
    opt.zero_grad()
    tracker = FSDPMemTracker(m, opt)
    tracker.track_inputs((x,))
    with tracker:
        forward(m, x).sum().backward()
        opt.step()
        opt.zero_grad()
    snap = tracker.get_tracker_snapshot("peak")
    dev = next(iter(snap))
    if rank == 0:
        t = plan.totals
        Path(out).write_text(json.dumps({
            "method": method, "tracker_peak": snap[dev]["Total"],
            "tracker": {str(k.value if hasattr(k, "value") else k): v for k, v in snap[dev].items()},
            "plan_peak": t.peak_bytes_per_rank, "plan": {
                "params": t.params_bytes_per_rank, "grads": t.grads_bytes_per_rank, "state": t.state_bytes_per_rank,
                "comm": t.comm_bytes_per_rank, "workspace": t.workspace_bytes}}))
    dist.barrier()  # gloo aborts a rank torn down while a peer still sends
    dist.destroy_process_group()


def tracker_rows() -> list[str]:
    import torch.multiprocessing as mp

    rows = []
    for method in ("adam", "blocked_shampoo"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "r.json")
            mp.spawn(_tracker_worker, args=(2, port, out, method), nprocs=2, join=True)
            r = json.loads(Path(out).read_text())
        tr, pl = r["tracker"], r["plan"]
        rows.append(f"| {method} | {r['tracker_peak']:,} | {r['plan_peak']:,} | {r['plan_peak'] / r['tracker_peak']:.3f} | "
                    f"{tr.get('Sharded Param', 0):,} / {pl['params']:,} | {tr.get('OptState', 0):,} / {pl['state']:,} | "
                    f"{tr.get('Unsharded Param', 0) + tr.get('All Gather', 0) + tr.get('Reduce Scatter', 0) + tr.get('Unsharded Grad', 0):,} / "
                    f"{pl['comm']:,} | {tr.get('Sharded Grad', 0):,} / {pl['grads']:,} | {tr.get('Temp', 0):,} / "
                    f"{pl['workspace']:,} | {tr.get('Activation', 0):,} |")
    return rows


def main() -> None:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    lines = [f"Per-rank memory, sketchplan's prediction against peers ({platform.machine()}, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; load average {load}).", ""]
    try:
        ds = deepspeed_rows(["gpt2-xl", "llama-7b", "llama-13b"], 8)
        lines += ["DeepSpeed's estimators count 2 B/param of 16-bit parameters plus 18 B/param / N (16-bit and fp32 "
              "gradients, fp32 master, two fp32 moments) and, for ZeRO-3, 4 B × the largest layer; sketchplan counts "
              "what it plans: 16-bit parameters and gradients (whole or sharded), fp32 master and moments, no fp32 "
              "gradient copy (so ≈ 16/18 of DeepSpeed's sharded term).", "",
              "DeepSpeed estimators (model states only; mixed-precision AdamW, 8 ranks, no offload), GiB per rank:",
                  "", "| model | estimator | DeepSpeed | sketchplan params+grads+master+state | ratio | sketchplan "
                  "peak with buffers and workspace |", "|---|---|---:|---:|---:|---:|", *ds, ""]
    except ImportError as exc:
        lines += [f"DeepSpeed not installed ({exc}); skipped.", ""]
    tr = tracker_rows()
    lines += ["`FSDPMemTracker` peak of a real 2-rank FSDP2 step (rank 0, bytes; wide MLP 6×1024², batch 1) against "
              "the plan's per-rank peak; columns `tracker / plan` per category:", "",
              "| method | tracker peak | plan peak | plan ÷ tracker | params | opt state | unsharded+all-gather+"
              "reduce-scatter / comm buffers | grads | temp / workspace | tracker activations |",
              "|---|---:|---:|---:|---|---|---|---|---|---|", *tr]
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(__file__).parent / "results" / "peer_memory.md").write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()
