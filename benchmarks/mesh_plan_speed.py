"""Planning time for a JAX mesh: per-device bytes in closed form (``methods.mesh_placement.even_tensor_bytes``,
what ``planner.mesh`` uses where a spec divides its tensor) against enumerating every device
(``tensor_device_bytes``), and against planning without a mesh.

    python benchmarks/mesh_plan_speed.py [--rounds 3] [--mesh data=64,model=4]   → benchmarks/results/mesh_plan_speed.md

Model: the ``gpt2`` preset (its cached shapes; parameters replicated: no specs), 2 GiB per device, the default
candidates and hardware profile. Each round plans three ways in interleaved order with the per-tensor byte cache
cleared before each plan (a cold plan, as the CLI runs one): no mesh, mesh with the closed form, mesh with the
enumeration (the closed form switched off). Ratios are per round (same load), reported as min / median / max. The
machine is shared and noisy (2 cores, other engineers' jobs): its load average is written next to the table. The
three plans are checked to agree (the same per-device state) before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from sketchplan.planner import make_plan, mesh as pmesh
from sketchplan.planner.sources import load_spec


def plan_once(mesh, closed_form: bool):
    pmesh._tensor_bytes.cache_clear()
    saved = pmesh.even_tensor_bytes
    if not closed_form:
        pmesh.even_tensor_bytes = lambda *a, **k: None
    try:
        spec = load_spec("gpt2")
        t = time.perf_counter()
        plan = make_plan(spec, "2GiB", mesh=mesh)
        return time.perf_counter() - t, plan
    finally:
        pmesh.even_tensor_bytes = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mesh", default="data=64,model=4")
    args = ap.parse_args()
    mesh = pmesh.parse_mesh(args.mesh)
    _, closed = plan_once(mesh, True)
    _, enumerated = plan_once(mesh, False)
    assert closed.to_yaml() == enumerated.to_yaml(), "the closed form and the enumeration plan differently"
    load0 = os.getloadavg()
    rows = []
    for r in range(args.rounds):
        t_none, _ = plan_once(None, True)
        t_closed, _ = plan_once(mesh, True)
        t_enum, _ = plan_once(mesh, False)
        rows.append((t_none, t_closed, t_enum))
        print(f"round {r}: no mesh {t_none:.2f} s, closed form {t_closed:.2f} s, enumeration {t_enum:.2f} s", flush=True)
    load1 = os.getloadavg()

    def stats(xs):
        return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"

    out = Path(__file__).parent / "results" / "mesh_plan_speed.md"
    lines = [
        "# Planning time for a JAX mesh (benchmarks/mesh_plan_speed.py)",
        "",
        f"gpt2 preset, 2 GiB per device, mesh {args.mesh} ({pmesh.devices(mesh)} devices), default candidates; "
        f"{args.rounds} interleaved rounds, each plan cold (byte cache cleared). Load average (1/5/15 min) "
        f"{load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} before, {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} after, "
        "on 2 shared cores: the machine is noisy, the per-round ratios are the result.",
        "",
        "| | seconds min / median / max |",
        "|---|---|",
        f"| no mesh | {stats([r[0] for r in rows])} |",
        f"| mesh, closed form | {stats([r[1] for r in rows])} |",
        f"| mesh, enumerating devices | {stats([r[2] for r in rows])} |",
        f"| ratio enumeration / closed form (per round) | {stats([r[2] / r[1] for r in rows])} |",
        f"| ratio closed form / no mesh (per round) | {stats([r[1] / r[0] for r in rows])} |",
        "",
        "Both mesh plans are identical (checked before timing).",
        "",
    ]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
