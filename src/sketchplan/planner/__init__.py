"""Planner: model analysis, memory/quality models, candidates, the solver, the plan schema and the check."""

from .analysis import ModelSpec, ParamSpec, analyze, model_fingerprint
from .make import make_plan, plan_from_configs, uniform_plan
from .plan import Plan
from .sizes import fmt_bytes, parse_size

__all__ = ["ModelSpec", "ParamSpec", "Plan", "analyze", "fmt_bytes", "make_plan", "model_fingerprint",
           "parse_size", "plan_from_configs", "uniform_plan"]
