"""Planner: model analysis, memory/quality models, candidates, the solver, the plan schema and the check."""
