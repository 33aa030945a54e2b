"""The front, its chosen member and its hypervolume: pure functions of trials."""

import itertools
import random

import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from evomerge.search.front import hypervolume_at
from evomerge.search.pareto import chosen, dominates, front_indices, hypervolume, pareto_front

MAX, MIN = StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE


def trial(number, values, constraints=None, state=TrialState.COMPLETE, attrs=None):
    t = create_trial(
        state=state,
        values=values if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        system_attrs={f"constraints:{k}": v for k, v in (constraints or {}).items()},
        user_attrs=attrs or {},
    )
    t.number = number
    return t


def test_front_holds_exactly_the_non_dominated_points():
    points = [(1, 1), (2, 0), (0, 2), (1, 0.5), (2, 0), (0.5, 0.5)]
    # (1, 0.5) and (0.5, 0.5) are dominated by (1, 1); the second (2, 0) repeats the first
    assert front_indices(points) == [0, 1, 2]
    assert dominates((1, 1), (1, 0.5)) and not dominates((1, 1), (1, 1))


def test_front_follows_each_objectives_direction():
    ts = [trial(0, [0.4, 10.0]), trial(1, [0.4, 5.0]), trial(2, [0.5, 20.0])]
    # maximize accuracy, minimize tokens: trial 1 beats trial 0 (fewer tokens, same accuracy)
    assert [t.number for t in pareto_front(ts, [MAX, MIN])] == [1, 2]
    assert [t.number for t in pareto_front(ts, [MAX, MAX])] == [2]


def test_front_and_chosen_member_keep_to_the_constraints():
    ts = [
        trial(0, [0.30, 0.90], {"keep": -0.1}),
        trial(1, [0.45, 0.70], {"keep": 0.1}),  # best target, loses the kept skill
        trial(2, [0.40, 0.85], {"keep": -0.05}),
        trial(3, [0.20, 0.95], {"keep": -0.15}),
        trial(4, [0.40, 0.85], {"keep": 0.0}),  # same point as 2, later: not a second member
    ]
    assert [t.number for t in pareto_front(ts, [MAX, MAX])] == [0, 2, 3]
    assert chosen(ts, [MAX, MAX]).number == 2


def test_with_no_feasible_trial_the_least_violating_one_is_chosen():
    ts = [
        trial(0, [0.5, 0.1], {"a": 0.3}),
        trial(1, [0.2, 0.3], {"a": 0.1}),
        trial(2, [0.1, 0.1], {"a": 0.05}),  # violates least, but trial 1 dominates it
    ]
    assert [t.number for t in pareto_front(ts, [MAX, MAX])] == [0, 1]  # the front of all
    assert chosen(ts, [MAX, MAX]).number == 1  # the chosen member is always on the front


def test_one_objective_without_constraints_is_the_best_fitness_earliest_on_ties():
    ts = [trial(0, [0.3]), trial(1, [0.5]), trial(2, [0.5]), trial(3, [0.1])]
    assert chosen(ts, [MAX]).number == 1
    assert chosen(ts, [MIN]).number == 3
    assert chosen([], [MAX]) is None


def test_hypervolume_of_known_fronts():
    assert hypervolume([(1.0, 1.0)], (0.0, 0.0)) == 1.0
    # two boxes overlapping in [0,1]x[0,1]: 2 + 2 - 1
    assert hypervolume([(2.0, 1.0), (1.0, 2.0)], (0.0, 0.0)) == 3.0
    assert hypervolume([(0.5, 0.5, 0.5)], (0.0, 0.0, 0.0)) == 0.125
    assert hypervolume([(1.0, 1.0), (0.5, 0.5)], (0.0, 0.0)) == 1.0  # dominated: adds nothing
    assert hypervolume([(-1.0, 2.0)], (0.0, 0.0)) == 0.0  # not above the reference
    assert hypervolume([], (0.0, 0.0)) == 0.0


def test_hypervolume_equals_a_monte_carlo_estimate_in_three_objectives():
    rng = random.Random(0)
    points = [tuple(rng.random() for _ in range(3)) for _ in range(12)]
    samples = [tuple(rng.random() for _ in range(3)) for _ in range(40000)]
    covered = sum(
        any(all(s <= p for s, p in zip(x, q, strict=True)) for q in points) for x in samples
    )
    assert hypervolume(points, (0.0, 0.0, 0.0)) == pytest.approx(covered / len(samples), abs=0.01)


def test_hypervolume_along_the_run_counts_only_feasible_candidates_in_trial_order():
    ts = [
        trial(0, [0.2, 0.5]),
        trial(1, None, state=TrialState.FAIL, attrs={"failure_reason": "nan: x"}),
        trial(2, [0.9, 0.9], {"keep": 0.2}),  # violates: adds nothing
        trial(3, [0.5, 0.5]),
        trial(4, None, state=TrialState.FAIL),  # lost with its worker: uses no budget
        trial(5, [0.1, 1.0]),
    ]
    hv = hypervolume_at(ts, [MAX, MAX], [1, 2, 3, 4], (0.0, 0.0))
    assert hv == {
        1: pytest.approx(0.1),
        2: pytest.approx(0.1),
        3: pytest.approx(0.1),
        4: pytest.approx(0.25),
    }
    assert list(itertools.accumulate(hv.values(), max)) == list(hv.values())
    # constraints ignored: the violating trial 2 dominates the rest from budget 3 on
    every = hypervolume_at(ts, [MAX, MAX], [1, 3, 5], (0.0, 0.0), feasible_only=False)
    assert every == {1: pytest.approx(0.1), 3: pytest.approx(0.81), 5: pytest.approx(0.82)}
