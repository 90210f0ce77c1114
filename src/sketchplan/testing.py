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
