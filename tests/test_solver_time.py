"""The two-budget solver (memory and step time) against brute force; monotonicity; binding report."""

import itertools
import random

import pytest

from sketchplan.planner.solve import Infeasible, Item
from sketchplan.planner.solve_time import InfeasibleTime, binding, solve_two


def brute(items, budget, tbudget):
    copies = [g for g, it in enumerate(items) for _ in range(it.count)]
    best = None
    for choice in itertools.product(*[range(len(items[g].bytes)) for g in copies]):
        b = sum(items[g].bytes[c] for g, c in zip(copies, choice)) + max(items[g].ws[c] for g, c in zip(copies, choice))
        t = sum(items[g].time[c] for g, c in zip(copies, choice))
        if b <= budget and t <= tbudget + 1e-12:
            v = sum(items[g].value[c] for g, c in zip(copies, choice))
            best = v if best is None else max(best, v)
    return best


def rand_items(rng, groups, count, cands):
    out = []
    for _ in range(groups):
        k = rng.randint(1, cands)
        b = [rng.randint(1, 100) for _ in range(k)]
        out.append(Item(count=rng.randint(1, count), bytes=b, ws=[rng.randint(0, 20) for _ in range(k)],
                        value=[rng.random() * 10 for _ in range(k)], time=[rng.random() * 5 for _ in range(k)]))
    return out


@pytest.mark.parametrize("seed", range(50))
def test_two_budgets_agree_with_brute_force(seed):
    rng = random.Random(seed)
    items = rand_items(rng, rng.randint(1, 3), 2, 4)
    budget = rng.randint(20, 300)
    tb = rng.random() * 10
    expect = brute(items, budget, tb)
    if expect is None:
        with pytest.raises((Infeasible, InfeasibleTime)):
            solve_two(items, budget, tb)
        return
    sol = solve_two(items, budget, tb)
    assert sol.value == pytest.approx(expect, rel=1e-9)
    assert sol.extra["time_ms"] <= tb + 1e-9
    assert sol.state_bytes + sol.workspace_bytes <= budget


@pytest.mark.parametrize("seed", range(5))
def test_large_instances_respect_both_budgets_and_bound(seed):
    rng = random.Random(100 + seed)
    items = rand_items(rng, 6, 40, 8)
    budget = sum(min(it.bytes) * it.count for it in items) + 3000
    tb = sum(min(it.time) * it.count for it in items) * 1.5
    sol = solve_two(items, budget, tb)
    assert sol.extra["time_ms"] <= tb + 1e-9 and sol.state_bytes + sol.workspace_bytes <= budget
    assert sol.upper_bound >= sol.value - 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_monotone_in_each_budget(seed):
    rng = random.Random(200 + seed)
    items = rand_items(rng, 3, 2, 4)
    mins = sum(min(it.time) * it.count for it in items)
    prev = -1.0
    for tb in [mins + 0.5 * i for i in range(12)]:
        v = solve_two(items, 10_000, tb).value
        assert v >= prev - 1e-9
        prev = v
    prev = -1.0
    for budget in range(150, 1000, 50):
        if brute(items, budget, mins + 3) is None:  # no assignment fits: the solver must say so
            with pytest.raises((Infeasible, InfeasibleTime)):
                solve_two(items, budget, mins + 3)
            assert prev < 0  # and every smaller budget was infeasible too
            continue
        v = solve_two(items, budget, mins + 3).value
        assert v >= prev - 1e-9
        prev = v
    assert prev >= 0  # the largest budget fits something


def test_binding_constraint_reported():
    # one tensor: cheap slow candidate with high value, fast small one with low value, big fast best one
    items = [Item(1, bytes=[10, 10, 100], ws=[0, 0, 0], value=[5.0, 1.0, 9.0], time=[10.0, 1.0, 1.0])]
    sol = solve_two(items, 50, 5.0)  # memory excludes the big one, time excludes the slow one
    assert sol.value == 1.0
    bind, relax = binding(items, 50, 5.0, sol)
    assert bind == "memory and time"
    assert relax["memory"]["value"] == 9.0 and relax["time"]["value"] == 5.0
    sol = solve_two(items, 500, 5.0)
    assert binding(items, 500, 5.0, sol)[0] is None and sol.value == 9.0
    sol = solve_two(items, 50, 50.0)
    assert binding(items, 50, 50.0, sol)[0] == "memory" and sol.value == 5.0
    with pytest.raises(InfeasibleTime) as exc:
        solve_two(items, 500, 0.5)
    assert exc.value.min_ms == 1.0


def brute_min_time(items, budget):
    copies = [g for g, it in enumerate(items) for _ in range(it.count)]
    best = None
    for choice in itertools.product(*[range(len(items[g].bytes)) for g in copies]):
        b = sum(items[g].bytes[c] for g, c in zip(copies, choice)) + max(items[g].ws[c] for g, c in zip(copies, choice))
        if b <= budget:
            t = sum(items[g].time[c] for g, c in zip(copies, choice))
            best = t if best is None else min(best, t)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_every_time_budget_from_the_fastest_feasible_plan_gets_a_plan(seed):
    # the fastest plan is computed under the memory budget: exactly at its time a plan exists, just below none
    rng = random.Random(300 + seed)
    items = rand_items(rng, rng.randint(1, 3), 2, 4)
    budget = rng.randint(40, 300)
    t_min = brute_min_time(items, budget)
    if t_min is None:
        return
    sol = solve_two(items, budget, t_min * (1 + 1e-12))
    assert sol.extra["time_ms"] <= t_min * (1 + 1e-9) and sol.state_bytes + sol.workspace_bytes <= budget
    assert sol.value == pytest.approx(brute(items, budget, t_min * (1 + 1e-12)), rel=1e-9)
    if t_min > 1e-6:
        with pytest.raises(InfeasibleTime) as exc:
            solve_two(items, budget, t_min * (1 - 1e-6))
        assert exc.value.min_ms == pytest.approx(t_min, rel=1e-9)


def test_fastest_is_the_per_tensor_fastest_when_it_fits_and_large_instances_get_a_plan_at_it():
    from sketchplan.planner.solve_time import fastest

    rng = random.Random(7)
    items = rand_items(rng, 8, 50, 8)
    big = 10**9
    t, assign, exact = fastest(items, big)
    assert exact and t == pytest.approx(sum(min(it.time) * it.count for it in items))
    # a budget that excludes nothing: the time budget at exactly the fastest plan's time is honoured
    sol = solve_two(items, big, t * (1 + 1e-12))
    assert sol.extra["time_ms"] <= t * (1 + 1e-9)
    assert sol.value >= sum(items[g].value[c] * n for g, a in enumerate(assign) for c, n in a.items()) - 1e-9


def test_infeasible_time_budget_never_prints_the_same_figure_twice():
    """A budget just under the fastest plan's step would round to the same 4 significant digits: the message
    shows enough digits to tell them apart, and names the flag to raise."""
    from sketchplan.planner.time_bound import infeasible_message

    msg = infeasible_message(52.4699, "--time-budget-ms", 52.4701)
    have, want = msg.split("time budget ")[1].split(" ms")[0], msg.split("memory budget, ")[1].split(" ms")[0]
    assert have != want and float(have) < float(want)
    assert "raise --time-budget-ms (at least 52.4701 ms)" in msg
    assert "time budget 1130 ms is below the fastest plan that fits the memory budget, 2460 ms" in \
        infeasible_message(1130.0, None, 2460.0)


def test_memory_figures_that_round_alike_show_exact_bytes():
    from sketchplan.planner.sizes import fmt_pair

    assert fmt_pair(4 * 2**30, 4 * 2**30 + 1000) == ("4.00 GiB (4,294,967,296 B)", "4.00 GiB (4,294,968,296 B)")
    assert fmt_pair(4 * 2**30, 5 * 2**30) == ("4.00 GiB", "5.00 GiB")
