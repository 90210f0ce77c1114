"""The knapsack solver against brute force, and its monotonicity in the budget."""

import itertools
import random

import pytest

from sketchplan.planner.solve import Infeasible, Item, solve


def brute(items, budget):
    copies = [g for g, it in enumerate(items) for _ in range(it.count)]
    best = None
    for choice in itertools.product(*[range(len(items[g].bytes)) for g in copies]):
        b = sum(items[g].bytes[c] for g, c in zip(copies, choice))
        w = max(items[g].ws[c] for g, c in zip(copies, choice))
        if b + w <= budget:
            v = sum(items[g].value[c] for g, c in zip(copies, choice))
            best = v if best is None else max(best, v)
    return best


def random_items(rng, n_groups, max_count, n_cands, with_ws=True):
    items = []
    for _ in range(n_groups):
        k = rng.randint(1, n_cands)
        items.append(Item(
            count=rng.randint(1, max_count),
            bytes=[rng.randint(1, 100) for _ in range(k)],
            ws=[rng.randint(0, 30) if with_ws else 0 for _ in range(k)],
            value=[rng.random() * 10 for _ in range(k)],
        ))
    return items


def check(items, budget):
    expect = brute(items, budget)
    if expect is None:
        with pytest.raises(Infeasible):
            solve(items, budget)
        return
    sol = solve(items, budget)
    used = sum(items[g].bytes[c] * n for g, a in enumerate(sol.assign) for c, n in a.items())
    ws = max(items[g].ws[c] for g, a in enumerate(sol.assign) for c in a)
    assert used + ws <= budget
    assert sum(a for asg in sol.assign for a in asg.values()) == sum(it.count for it in items)
    got = sum(items[g].value[c] * n for g, a in enumerate(sol.assign) for c, n in a.items())
    assert got == pytest.approx(sol.value)
    assert sol.upper_bound >= expect - 1e-9  # the bound is a real bound
    assert got == pytest.approx(expect, rel=1e-9), (items, budget)
    assert sol.status == "exact"


@pytest.mark.parametrize("seed", range(60))
def test_agrees_with_brute_force(seed):
    rng = random.Random(seed)
    items = random_items(rng, rng.randint(1, 4), 2, 4, with_ws=seed % 2 == 0)
    total_copies = sum(it.count for it in items)
    if total_copies > 6:
        items = items[:2]
    lo = sum(min(it.bytes) * it.count for it in items)
    hi = sum(max(it.bytes) * it.count for it in items) + 30
    check(items, rng.randint(max(0, lo - 10), hi))


@pytest.mark.parametrize("seed", range(10))
def test_larger_budget_never_lowers_the_score(seed):
    rng = random.Random(1000 + seed)
    items = random_items(rng, 6, 20, 8)
    lo = sum(min(it.bytes) * it.count for it in items) + 30
    prev = -1.0
    for budget in range(lo, lo + 3000, 97):
        v = solve(items, budget).value
        assert v >= prev - 1e-9
        prev = v


def test_near_exact_bound_holds_on_large_groups():
    rng = random.Random(7)
    items = random_items(rng, 8, 200, 12)
    budget = sum(min(it.bytes) * it.count for it in items) + 5000
    sol = solve(items, budget)
    max_step = max(max(it.value) - min(it.value) for it in items)
    assert 0 <= sol.gap <= max_step + 1e-9  # integral but for one copy
    assert sol.value <= sol.upper_bound + 1e-9


def test_infeasible_reports_minimum():
    items = [Item(2, [10, 20], [5, 0], [1.0, 2.0])]
    with pytest.raises(Infeasible) as exc:
        solve(items, 20)
    assert exc.value.min_bytes == 25  # 2·10 state + 5 workspace beats 2·20 + 0
