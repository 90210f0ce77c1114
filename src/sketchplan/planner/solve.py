"""The per-tensor choice under a memory budget: a multiple-choice knapsack with a max-workspace term.

Problem. Groups g of ``count_g`` identical tensors; each copy picks one candidate c with state bytes b_c,
step workspace w_c and value v_c (its score × numel). Maximise Σ v subject to
    Σ_copies b_c + max_copies w_c ≤ budget.

Method.
1. The max-workspace term is handled exactly by enumerating the cap W over the distinct workspace values:
   with cap W only candidates with w_c ≤ W are allowed and the state budget is budget − W.
2. For one cap the LP relaxation of the multiple-choice knapsack is solved exactly by the classic greedy
   over each class's upper convex hull (Sinha & Zoltners 1979): increments sorted by value per byte, taken
   in order; the first that does not fit is taken fractionally. Identical tensors are handled as counts, so a
   70B model costs what its distinct shapes cost. The integer solution takes the same increments, skips the
   one that does not fit (for as many copies as do not fit) and keeps going with smaller ones; a final pass
   spends what is left on the best single-copy upgrades among all candidates.
3. Bound: the LP value UB is an upper bound of the integer optimum, so the plan's gap = UB − value is a proof
   of near-optimality; it is at most one copy's largest increment (one tensor's value), because the LP
   solution is integral except for one copy. When the gap is above tolerance and the instance is small, an
   exact Pareto dynamic programme (Nemhauser–Ullmann lists pruned by the greedy's value) closes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TOL = 1e-9


@dataclass
class Item:
    """One group of ``count`` identical tensors and its candidates' bytes, workspace and value per copy."""

    count: int
    bytes: list[int]
    ws: list[int]
    value: list[float]
    time: list[float] | None = None  # amortised step time per copy (ms), for the time budget (solve_time.py)


@dataclass
class Solution:
    assign: list[dict[int, int]]  # per item: candidate index → number of copies
    value: float
    upper_bound: float
    state_bytes: int
    workspace_bytes: int
    status: str = "near-exact"
    caps_tried: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def gap(self) -> float:
        return max(0.0, self.upper_bound - self.value)


class Infeasible(Exception):
    """No assignment fits; ``min_bytes`` is the least budget any assignment needs."""

    def __init__(self, min_bytes: int, assign: list[dict[int, int]]):
        super().__init__(min_bytes)
        self.min_bytes = min_bytes
        self.assign = assign


def _hull(idx: list[int], item: Item) -> list[int]:
    """Indices on the upper concave hull of (bytes, value), from the cheapest (best value among cheapest)."""
    pts = sorted(idx, key=lambda c: (item.bytes[c], -item.value[c]))
    start = pts[0]
    hull = [start]
    for c in pts[1:]:
        if item.value[c] <= item.value[hull[-1]] + TOL:
            continue
        if item.bytes[c] == item.bytes[hull[-1]]:
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # remove b if it lies on or under the segment a→c
            lhs = (item.value[b] - item.value[a]) * (item.bytes[c] - item.bytes[a])
            rhs = (item.value[c] - item.value[a]) * (item.bytes[b] - item.bytes[a])
            if lhs <= rhs:
                hull.pop()
            else:
                break
        hull.append(c)
    return hull


def _allowed(item: Item, cap: int) -> list[int]:
    return [c for c in range(len(item.bytes)) if item.ws[c] <= cap]


def _min_bytes(items: list[Item], allowed: list[list[int]]) -> int | None:
    """``min_state``'s byte total alone (the tie-break on value picks among equal bytes, so it cannot change
    the sum), given each item's allowed candidates."""
    total = 0
    for it, idx in zip(items, allowed):
        if not idx:
            return None
        b = it.bytes
        total += it.count * min(b[c] for c in idx)
    return total


def min_state(items: list[Item], cap: int) -> tuple[int, list[dict[int, int]]] | None:
    """Least state bytes with workspace ≤ cap, and the assignment that gives it (None if impossible)."""
    total, assign = 0, []
    for it in items:
        allowed = _allowed(it, cap)
        if not allowed:
            return None
        c = min(allowed, key=lambda i: (it.bytes[i], -it.value[i]))
        total += it.count * it.bytes[c]
        assign.append({c: it.count})
    return total, assign


def greedy(items: list[Item], budget: int, cap: int, polish: bool = True, allowed: list[list[int]] | None = None,
           hull_memo: dict | None = None) -> Solution | None:
    """LP-greedy on hulls with counts (see module docstring); None when even the cheapest choice does not fit.
    ``polish``: improve the rounded LP solution by local moves (``_fill``); the LP bound does not depend on it.
    ``allowed``: each item's candidates under ``cap`` when the caller has them; ``hull_memo``: hulls already
    built for these items, by (item, allowed candidates) (``solve`` shares one across its caps)."""
    hulls = []
    for g, it in enumerate(items):
        idx = _allowed(it, cap) if allowed is None else allowed[g]
        if not idx:
            return None
        if hull_memo is None:
            hulls.append(_hull(idx, it))
            continue
        key = (g, tuple(idx))
        h = hull_memo.get(key)
        if h is None:
            h = hull_memo[key] = _hull(idx, it)
        hulls.append(h)
    base = sum(it.count * it.bytes[h[0]] for it, h in zip(items, hulls))
    if base > budget:
        return None
    rem = budget - base
    value = sum(it.count * it.value[h[0]] for it, h in zip(items, hulls))
    levels = [{0: it.count} for it in items]  # hull level → copies
    incs = []
    for g, (it, h) in enumerate(zip(items, hulls)):
        for j in range(len(h) - 1):
            db = it.bytes[h[j + 1]] - it.bytes[h[j]]
            dv = it.value[h[j + 1]] - it.value[h[j]]
            incs.append((-dv / db, g, j, db, dv))
    incs.sort(key=lambda t: (t[0], t[1], t[2]))
    ub = None
    price = 0.0
    for _, g, j, db, dv in incs:
        n_at = levels[g].get(j, 0)
        if n_at == 0:
            continue
        u = min(n_at, rem // db)
        if ub is None and u < n_at:
            ub = value + u * dv + (rem - u * db) / db * dv
            price = dv / db  # the LP's marginal value of a byte: the budget's shadow price
        if u:
            levels[g][j] -= u
            levels[g][j + 1] = levels[g].get(j + 1, 0) + u
            rem -= u * db
            value += u * dv
    if ub is None:
        ub = value
    assign = [{h[j]: n for j, n in lv.items() if n} for lv, h in zip(levels, hulls)]
    if polish:
        value, rem = _fill(items, assign, rem, cap, value)
    state = budget - rem
    ws = max((items[g].ws[c] for g, a in enumerate(assign) for c in a), default=0)
    sol = Solution(assign, value, max(ub, value), state, ws)
    sol.extra["price"] = price
    return sol


def _fill(items: list[Item], assign: list[dict[int, int]], rem: int, cap: int, value: float) -> tuple[float, int]:
    """Local improvement of the rounded LP solution: repeatedly apply the best move that fits the remaining
    budget — upgrade copies of one tensor class, or downgrade one copy and upgrade another (an exchange)."""
    allowed = [[c for c in range(len(it.bytes)) if it.ws[c] <= cap] for it in items]
    for _ in range(2_000):
        best = None  # (gain, moves) with moves = [(g, from, to)]
        singles = []  # (dv, db, g, cur, c) for every one-copy change
        add = singles.append
        for g, it in enumerate(items):
            values, nbytes = it.value, it.bytes
            for cur in assign[g]:
                v_cur, b_cur = values[cur], nbytes[cur]
                for c in allowed[g]:
                    if c != cur:
                        add((values[c] - v_cur, nbytes[c] - b_cur, g, cur, c))
        for dv, db, g, cur, c in singles:
            if dv > TOL and db <= rem and (best is None or dv > best[0]):
                n = assign[g][cur] if db <= 0 else min(assign[g][cur], rem // db)
                best = (dv * n, [(g, cur, c)] * n)
        ups = sorted((t for t in singles if t[0] > TOL and t[1] > 0), key=lambda t: -t[0])[:64]
        downs = sorted((t for t in singles if t[1] < 0), key=lambda t: -t[0])[:64]
        for dv1, db1, g1, cur1, c1 in downs:
            for dv2, db2, g2, cur2, c2 in ups:
                if g1 == g2 and cur1 == cur2 and assign[g1][cur1] < 2:
                    continue
                gain = dv1 + dv2
                if gain > TOL and db1 + db2 <= rem and (best is None or gain > best[0]):
                    best = (gain, [(g1, cur1, c1), (g2, cur2, c2)])
        if best is None:
            break
        for g, cur, c in best[1]:
            assign[g][cur] -= 1
            if not assign[g][cur]:
                del assign[g][cur]
            assign[g][c] = assign[g].get(c, 0) + 1
            rem -= items[g].bytes[c] - items[g].bytes[cur]
            value += items[g].value[c] - items[g].value[cur]
    return value, rem


class TooLarge(Exception):
    """The exact search would keep more states than allowed."""


def exact(items: list[Item], budget: int, cap: int, lower: float, max_states: int = 20_000,
          max_work: int = 30_000, spent: list[int] | None = None) -> Solution | None:
    """Exact optimum for one cap by a Pareto-list DP over copies, pruned with ``lower``.

    Returns None when no assignment reaches ``lower``; raises ``TooLarge`` past ``max_states`` states in one layer
    or ``max_work`` states generated in all (planning stays well under a second; the greedy's bound stands).
    ``spent``: a one-element counter shared by the calls of one solve, so that ``max_work`` bounds them together.
    """
    spent = [0] if spent is None else spent
    allowed = [_allowed(it, cap) for it in items]
    if any(not a for a in allowed):
        return None
    copies = [g for g, it in enumerate(items) for _ in range(it.count)]
    best_rest = [0.0] * (len(copies) + 1)
    for i in range(len(copies) - 1, -1, -1):
        g = copies[i]
        best_rest[i] = best_rest[i + 1] + max(items[g].value[c] for c in allowed[g])
    # state: (bytes, value, parent index in previous layer, choice)
    layers: list[list[tuple[int, float, int, int]]] = [[(0, 0.0, -1, -1)]]
    for i, g in enumerate(copies):
        it = items[g]
        if len(layers[-1]) * len(allowed[g]) > max_work - spent[0]:  # the layer alone would exceed the work cap
            raise TooLarge
        new = []
        for pi, (b, v, _, _) in enumerate(layers[-1]):
            for c in allowed[g]:
                nb = b + it.bytes[c]
                nv = v + it.value[c]
                if nb <= budget and nv + best_rest[i + 1] >= lower - TOL:
                    new.append((nb, nv, pi, c))
        spent[0] += len(new)
        if spent[0] > max_work:
            raise TooLarge
        new.sort(key=lambda s: (s[0], -s[1]))
        pareto, top = [], -math.inf
        for s in new:
            if s[1] > top + TOL:
                pareto.append(s)
                top = s[1]
        if len(pareto) > max_states:
            raise TooLarge
        if not pareto:
            return None
        layers.append(pareto)
    end = max(range(len(layers[-1])), key=lambda k: layers[-1][k][1])
    bytes_used, value = layers[-1][end][0], layers[-1][end][1]
    assign: list[dict[int, int]] = [dict() for _ in items]
    k = end
    for i in range(len(copies), 0, -1):
        _, _, parent, c = layers[i][k]
        g = copies[i - 1]
        assign[g][c] = assign[g].get(c, 0) + 1
        k = parent
    ws = max((items[g].ws[c] for g, a in enumerate(assign) for c in a), default=0)
    return Solution(assign, value, value, bytes_used, ws, status="exact")


def solve(items: list[Item], budget: int | None, exact_limit: int = 64, caps: list[int] | None = None,
          cap_values: dict[int, float] | None = None, polish: bool = True) -> Solution:
    """Best assignment with Σ state + max workspace ≤ budget (None: unconstrained, each copy's best).

    ``caps``: try only these workspace caps (the answer is then a feasible assignment, but its ``upper_bound`` is
    valid only over those caps: callers that need a proven bound pass None). ``cap_values``: filled with each
    tried cap's greedy value."""
    if budget is None:
        assign = []
        for it in items:
            c = max(range(len(it.bytes)), key=lambda i: (it.value[i], -it.bytes[i], -it.ws[i]))
            assign.append({c: it.count})
        value = sum(it.count * it.value[next(iter(a))] for it, a in zip(items, assign))
        state = sum(it.count * it.bytes[next(iter(a))] for it, a in zip(items, assign))
        ws = max((it.ws[next(iter(a))] for it, a in zip(items, assign)), default=0)
        return Solution(assign, value, value, state, ws, status="exact")
    every_cap = caps is None
    caps = sorted({w for it in items for w in it.ws} if every_cap else set(caps), reverse=True)
    best: Solution | None = None
    ub = -math.inf
    tried = 0
    hull_memo: dict = {}
    for cap in caps:
        allowed = [_allowed(it, cap) for it in items]
        ms = _min_bytes(items, allowed)
        if ms is None or ms + cap > budget:
            continue
        tried += 1
        sol = greedy(items, budget - cap, cap, polish, allowed, hull_memo)
        if sol is None:
            continue
        if cap_values is not None:
            cap_values[cap] = sol.value
        ub = max(ub, sol.upper_bound)
        if best is None or sol.value > best.value + TOL:
            best = sol
    if best is None:
        options = [(ms[0] + cap, ms[1]) for cap in caps if (ms := min_state(items, cap)) is not None]
        need, assign = min(options, key=lambda t: t[0])
        raise Infeasible(need, assign)
    best.upper_bound = max(ub, best.value)
    best.caps_tried = tried
    if best.gap <= TOL * max(1.0, abs(best.upper_bound)):
        best.status = "exact"
        return best
    if sum(it.count for it in items) <= exact_limit:
        try:
            results = []
            spent = [0]
            for cap in caps:
                ms = min_state(items, cap)
                if ms is not None and ms[0] + cap <= budget:
                    sol = exact(items, budget - cap, cap, best.value, spent=spent)
                    if sol is not None:
                        results.append(sol)
        except TooLarge:
            return best
        top = max(results, key=lambda s: s.value, default=None)
        if top is not None and top.value > best.value + TOL:
            top.caps_tried = tried
            return top
        best.upper_bound = best.value
        best.status = "exact"
    return best
