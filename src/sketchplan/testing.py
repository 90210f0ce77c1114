"""Helpers for users' own test suites.

    from sketchplan.testing import assert_plan_holds

    def test_optimizer_memory_plan():
        assert_plan_holds("plans/model.yaml", build_model_on_meta())
"""

from __future__ import annotations

import io

from .planner.check import CheckReport
from .verify import check
from .planner.plan import Plan


def assert_plan_holds(plan_path: str, model, *, tolerance_pct: float = 0.0, budget: int | None = None,
                      measure: bool = False, device: str = "cpu") -> CheckReport:
    """Fail (AssertionError with the check's tables) when ``model`` no longer fits the committed plan.

    Same checks as ``sketchplan check``: structure, optimizer-state bytes within ``tolerance_pct``, the budget,
    and with ``measure=True`` the bytes the real optimizer allocates. Returns the report when it passes.
    """
    from rich.console import Console

    from .report import render_check

    report = check(Plan.load(plan_path), model, plan_path=str(plan_path), tolerance_pct=tolerance_pct,
                   budget=budget, measure=measure, device=device)
    if not report.ok:
        buf = io.StringIO()
        render_check(report, Console(file=buf, width=160, color_system=None))
        raise AssertionError(f"optimizer memory plan {plan_path} does not hold:\n{buf.getvalue()}")
    return report


def assert_rank_matches_plan(optimizer, model, plan) -> dict:
    """Inside a multi-process run (DDP, ZeRO, FSDP2): fail unless this rank's allocated optimizer state equals
    the plan's per-rank prediction, in total and tensor by tensor (``sketchplan.verify.measure_rank``).
    ``plan``: a ``Plan`` or its path. Returns the measurement."""
    from .verify import measure_rank

    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    m = measure_rank(optimizer, model, plan)
    bad = [t for t in m["tensors"] if t["predicted_bytes"] != t["measured_bytes"]]
    if bad or m["predicted_bytes"] != m["measured_bytes"]:
        rows = "\n".join(f"  {t['name']}: predicted {t['predicted_bytes']:,} B, allocated {t['measured_bytes']:,} B"
                         for t in bad[:20])
        raise AssertionError(f"rank {m['rank']} of {m['world_size']} ({m['parallelism']}) allocated "
                             f"{m['measured_bytes']:,} B of optimizer state, the plan predicts "
                             f"{m['predicted_bytes']:,} B:\n{rows}")
    return m
