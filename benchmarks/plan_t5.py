"""Planning time of a tiny T5 (tied embeddings, many small distinct shapes) against a tiny Llama of similar size,
under a memory budget, with and without a hardware profile (issue: a tiny T5 under a budget took 299 s).

Run: ``python benchmarks/plan_t5.py``; writes benchmarks/results/plan_t5.md: the planner's own ``solver.seconds``
(analysis through solution, no I/O), min/median/max of ROUNDS interleaved rounds, and the load average.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

from sketchplan.planner import analyze, make_plan

ROUNDS = 5


def models():
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                 num_heads=4))
        llama = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4))
    return {"tiny T5": analyze(t5), "tiny Llama": analyze(llama)}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load average:")[-1].strip()


def main() -> None:
    specs = models()
    times: dict[tuple[str, str], list[float]] = {}
    loads = [load()]
    for _ in range(ROUNDS):
        for name, spec in specs.items():
            for hw in (None, "auto"):
                budget = spec.n_params * 12  # params + grads + 4 B/param of state: all-Adam does not fit
                plan = make_plan(spec, budget, hardware=hw)
                times.setdefault((name, str(hw)), []).append(plan.solver.seconds)
    loads.append(load())
    lines = [f"Measured on {platform.processor() or platform.machine()} ({os.cpu_count()} cores, shared), torch "
             f"{torch.__version__}; {ROUNDS} interleaved rounds; load average before | after: {' | '.join(loads)}.",
             "", "| model | parameters (tensors) | hardware | solver seconds min / median / max |", "|---|---|---|---|"]
    for (name, hw), ts in times.items():
        spec = specs[name]
        lines.append(f"| {name} | {spec.n_params:,} ({len(spec.params)}) | {hw} | {min(ts):.3f} / "
                     f"{statistics.median(ts):.3f} / {max(ts):.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "plan_t5.md"
    out.write_text("# Planning time: tiny T5 vs tiny Llama under a memory budget\n\n" + text)


if __name__ == "__main__":
    main()
