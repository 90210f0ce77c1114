"""Two budgets: memory (``solve.py``) and the amortised optimizer step time, which adds up over tensors.

Maximise Σ v  subject to  Σ b + max w ≤ M  and  Σ t ≤ T.

Lagrangian relaxation of the time constraint (Fisher 1981): for a price λ ≥ 0 (value per millisecond) the
memory-only problem with values v − λ·t is solved by ``solve.solve``. λ = 0 is the memory-only optimum; if it
meets T the time budget does not bind. Otherwise λ is bisected to the smallest price whose solution meets T,
and a repair pass spends the slack of both budgets on single-copy upgrades.

Exact in the time dimension. The fastest plan that fits the memory budget (``fastest``) is found first: each
tensor's fastest candidate when those fit together (all-Adam, typically: exact), else the memory knapsack with
value −time. A time budget below it is infeasible and the error names it; every time budget at or above it
gets a plan, because the repaired fastest plan is a feasible starting point the λ search can only improve. Weak duality gives the proof:
for every λ, UB_mem(v − λt) + λ·T ≥ the optimum, so the plan's gap is bounded by the smallest such value
seen. Small instances (few combinations) are enumerated exactly instead.

``binding`` says which budget limits the plan: a budget binds when relaxing it alone yields a better plan;
``relax`` records those better plans' values and costs ("what relaxing it would buy").
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from .solve import TOL, Infeasible, Item, Solution, solve


class InfeasibleTime(Exception):
    """No assignment meets the time budget; ``min_ms`` is the least amortised step time possible."""

    def __init__(self, min_ms: float):
        super().__init__(min_ms)
        self.min_ms = min_ms


def _times(items: list[Item]) -> list[list[float]]:
    return [it.time if it.time is not None else [0.0] * len(it.bytes) for it in items]


def total_time(items: list[Item], assign: list[dict[int, int]]) -> float:
    ts = _times(items)
    return sum(ts[g][c] * n for g, a in enumerate(assign) for c, n in a.items())


def _value(items: list[Item], assign: list[dict[int, int]]) -> float:
    return sum(items[g].value[c] * n for g, a in enumerate(assign) for c, n in a.items())


def _bytes(items: list[Item], assign: list[dict[int, int]]) -> tuple[int, int]:
    state = sum(items[g].bytes[c] * n for g, a in enumerate(assign) for c, n in a.items())
    ws = max((items[g].ws[c] for g, a in enumerate(assign) for c in a), default=0)
    return state, ws


def _priced(items: list[Item], lam: float) -> list[Item]:
    ts = _times(items)
    return [replace(it, value=[v - lam * t for v, t in zip(it.value, tg)]) for it, tg in zip(items, ts)]


def _repair(items: list[Item], assign: list[dict[int, int]], budget: int, time_budget: float) -> None:
    """Single-copy upgrades that keep both budgets, best value gain first, until none is left."""
    ts = _times(items)
    for _ in range(10_000):
        state, ws = _bytes(items, assign)
        rem_t = time_budget - total_time(items, assign)
        best = None
        best_dv = 0.0
        for g, it in enumerate(items):
            values, nbytes, wss, tg = it.value, it.bytes, it.ws, ts[g]
            for cur in assign[g]:
                v_cur, room, t_cur = values[cur], budget - state + nbytes[cur], rem_t + 1e-12
                for c in range(len(nbytes)):
                    dv = values[c] - v_cur
                    if dv <= TOL:
                        continue
                    w = wss[c]
                    if nbytes[c] + (ws if ws >= w else w) > room:
                        continue
                    if tg[c] - tg[cur] > t_cur:
                        continue
                    if best is None or dv > best_dv:
                        best, best_dv = (dv, g, cur, c), dv
        if best is None:
            return
        _, g, cur, c = best
        assign[g][cur] -= 1
        if not assign[g][cur]:
            del assign[g][cur]
        assign[g][c] = assign[g].get(c, 0) + 1


def _enumerate(items: list[Item], budget: int, time_budget: float) -> Solution | None:
    copies = [g for g, it in enumerate(items) for _ in range(it.count)]
    ts = _times(items)
    best = None
    for choice in itertools.product(*[range(len(items[g].bytes)) for g in copies]):
        b = sum(items[g].bytes[c] for g, c in zip(copies, choice))
        w = max((items[g].ws[c] for g, c in zip(copies, choice)), default=0)
        t = sum(ts[g][c] for g, c in zip(copies, choice))
        if b + w <= budget and t <= time_budget + 1e-12:
            v = sum(items[g].value[c] for g, c in zip(copies, choice))
            if best is None or v > best[0] + TOL:
                best = (v, choice, b, w)
    if best is None:
        return None
    v, choice, b, w = best
    assign: list[dict[int, int]] = [dict() for _ in items]
    for g, c in zip(copies, choice):
        assign[g][c] = assign[g].get(c, 0) + 1
    return Solution(assign, v, v, b, w, status="exact")


def fastest(items: list[Item], budget: int | None) -> tuple[float, list[dict[int, int]], bool]:
    """The least total step time of any assignment that fits ``budget``, that assignment, and whether it is exact.

    When every copy's fastest candidate (best value among equally fast ones) fits together the answer is exact;
    otherwise the memory knapsack maximising −time (``solve.solve``) gives it within its own gap.
    """
    ts = _times(items)
    assign = []
    for it, tg in zip(items, ts):
        c = min(range(len(it.bytes)), key=lambda i: (tg[i], -it.value[i], it.bytes[i]))
        assign.append({c: it.count})
    state, ws = _bytes(items, assign)
    if budget is None or state + ws <= budget:
        return total_time(items, assign), assign, True
    neg = [replace(it, value=[-t for t in tg]) for it, tg in zip(items, ts)]
    sol = solve(neg, budget)  # raises Infeasible when nothing fits the memory budget
    return total_time(items, sol.assign), sol.assign, sol.status == "exact"


def _combinations(items: list[Item]) -> float:
    """How many assignments there are (inf beyond float range: many copies of many candidates)."""
    log = sum(it.count * math.log(len(it.bytes)) for it in items)
    return math.inf if log > 700 else math.exp(log)


#: Workspace caps the price search keeps evaluating between its full evaluations (see ``solve_two``).
FOCUS_CAPS = 12


def solve_two(items: list[Item], budget: int | None, time_budget: float | None,
              enumerate_limit: float = 50_000) -> Solution:
    """Best assignment under the memory budget and the step-time budget (see module docstring).

    Raises ``Infeasible`` (memory) or ``InfeasibleTime``. ``Solution.extra`` holds ``time_ms``,
    ``binding`` (None, "memory", "time" or "memory and time") and ``relax``.
    """
    # Without a memory budget every assignment fits under the largest workspace cap, which allows every candidate:
    # that cap alone is exact (and the search need not try the others).
    top = [max((max(it.ws) for it in items), default=0)] if budget is None else None
    if budget is None:
        budget = sum(max(it.bytes) * it.count for it in items) + top[0]
    base = solve(items, budget, caps=top)
    base.extra["time_ms"] = total_time(items, base.assign)
    if time_budget is None:
        return base
    if base.extra["time_ms"] <= time_budget + 1e-12:
        return base
    min_t, fast_assign, _ = fastest(items, budget)
    if min_t > time_budget + 1e-12:
        raise InfeasibleTime(min_t)
    if _combinations(items) <= enumerate_limit:
        sol = _enumerate(items, budget, time_budget)
        if sol is None:
            raise Infeasible(budget + 1, [])
        sol.extra["time_ms"] = total_time(items, sol.assign)
        return sol
    scale = max((max(it.value) for it in items), default=1.0) / max(min_t, 1e-9) + 1.0
    lo, hi = 0.0, scale * 1e-6
    start = [dict(a) for a in fast_assign]
    _repair(items, start, budget, time_budget)
    state, ws = _bytes(items, start)
    best: Solution | None = Solution(start, _value(items, start), _value(items, start), state, ws)
    upper = math.inf

    # The price search evaluates the priced problem at every workspace cap once (and again at the end), and in
    # between only at the caps whose greedy value came closest to the best: the search needs the priced optimum's
    # time, not a bound, and a full evaluation per price made GPT-2's default plan take seconds. The proven
    # bound uses only the full evaluations (weak duality holds at any price).
    focus: list[int] | None = None

    def at(lam: float, full: bool = False) -> Solution:
        nonlocal best, upper, focus
        values: dict[int, float] = {}
        caps = top if top is not None else None if full or focus is None else focus
        sol = solve(_priced(items, lam), budget, exact_limit=0, caps=caps, cap_values=values,
                    polish=full)  # the LP bound and its rounding suffice inside the search
        if full or focus is None:
            upper = min(upper, sol.upper_bound + lam * time_budget)
            focus = sorted(values, key=lambda c: -values[c])[:FOCUS_CAPS]
        t = total_time(items, sol.assign)
        if t <= time_budget + 1e-12:
            assign = [dict(a) for a in sol.assign]
            _repair(items, assign, budget, time_budget)
            v = _value(items, assign)
            if best is None or v > best.value + TOL:
                state, ws = _bytes(items, assign)
                best = Solution(assign, v, v, state, ws)
        sol.extra["time_ms"] = t
        return sol

    for _ in range(80):
        if at(hi).extra["time_ms"] <= time_budget + 1e-12:
            break
        lo, hi = hi, hi * 4
    for _ in range(40):
        mid = (lo + hi) / 2
        if at(mid).extra["time_ms"] <= time_budget + 1e-12:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-3 * hi:  # the repair pass spends what the last halvings would refine
            break
    at(hi, full=True)  # a proven bound at the final price, and its solution over every cap
    best.upper_bound = max(min(upper, base.upper_bound), best.value)
    best.status = "exact" if best.gap <= TOL * max(1.0, abs(best.upper_bound)) else "near-exact"
    best.extra["time_ms"] = total_time(items, best.assign)
    best.extra["memory_only"] = base  # the plan without the time budget (``binding`` reuses it)
    return best


def binding(items: list[Item], budget: int | None, time_budget: float | None, sol: Solution) -> tuple[str | None, dict]:
    """Which budgets bind, and the value, bytes and time of the plan with each relaxed alone."""
    relax: dict[str, dict] = {}
    bind = []
    if budget is not None:
        free_mem = solve(items, None) if time_budget is None else solve_two(items, None, time_budget)
        if free_mem.value > sol.value + TOL * max(1.0, abs(sol.value)):
            bind.append("memory")
            relax["memory"] = {"value": free_mem.value, "bytes": free_mem.state_bytes + free_mem.workspace_bytes,
                               "time_ms": total_time(items, free_mem.assign)}
    if time_budget is not None:
        free_time = sol.extra.get("memory_only") or (solve(items, budget) if budget is not None else
                                                     solve(items, None))
        if free_time.value > sol.value + TOL * max(1.0, abs(sol.value)):
            bind.append("time")
            relax["time"] = {"value": free_time.value, "bytes": free_time.state_bytes + free_time.workspace_bytes,
                             "time_ms": total_time(items, free_time.assign)}
    return (" and ".join(bind) or None), relax
