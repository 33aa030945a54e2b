"""The Pareto front of a multi-objective run, its chosen member, and its hypervolume.

Pure functions of completed trials: each trial's objective values (`trial.values`, in the
study's directions) and its constraint values (`trial.constraints`, set by
`Trial.set_constraint`: <= 0 where satisfied). A trial without any satisfies every constraint
(a run without constraints).
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

Point = tuple[float, ...]
OBJECTIVE_NAMES = "objective_names"  # study user attr: the objectives' names, in order


def feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def oriented(trial: FrozenTrial, directions: Sequence[StudyDirection]) -> Point:
    """The trial's values turned so that larger is better in every objective."""
    values = trial.values or ()
    return tuple(
        v if d == StudyDirection.MAXIMIZE else -v for v, d in zip(values, directions, strict=True)
    )


def dominates(a: Point, b: Point) -> bool:
    """a is at least as good as b everywhere and better somewhere (larger is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(
        x > y for x, y in zip(a, b, strict=True)
    )


def front_indices(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, in input order; of equal points, the first."""
    out = []
    for i, p in enumerate(points):
        beaten = any(dominates(q, p) for q in points)
        repeated = any(points[j] == p for j in range(i))
        if not beaten and not repeated:
            out.append(i)
    return out


def pareto_front(
    trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]
) -> list[FrozenTrial]:
    """The constraint-satisfying trials that no other such trial dominates, by trial number.

    When no trial satisfies the constraints, the front of all trials (the user sees how far
    the run got; `chosen` says none is feasible)."""
    done = sorted((t for t in trials if t.values is not None), key=lambda t: t.number)
    pool = [t for t in done if feasible(t)] or done
    return [pool[i] for i in front_indices([oriented(t, directions) for t in pool])]


def chosen(
    trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]
) -> FrozenTrial | None:
    """The run's single answer (best_recipe.yaml), always a member of `pareto_front`: the
    member best on the primary (first) objective, the earliest on ties (so the uniform merge,
    trial 0, wins unless something beats it). Where no trial satisfies the constraints, the
    front member that violates them least (summed), then the best primary objective."""
    front = pareto_front(trials, directions)
    if not front:
        return None

    def key(t: FrozenTrial) -> tuple[float, float, int]:
        excess = sum(max(v, 0.0) for v in t.constraints.values())
        return (-excess, oriented(t, directions)[0], -t.number)

    return max(front, key=key)


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Volume dominated by `points` (larger is better) and bounded below by `reference`.

    Exact, by slicing along the last objective (Zitzler's HSO): fine for the few dozen
    points and two to four objectives of a search's front. Points not above the reference in
    every objective add nothing.
    """
    pts = [p for p in points if all(x > r for x, r in zip(p, reference, strict=True))]
    if not pts:
        return 0.0
    if len(reference) == 1:
        return max(p[0] for p in pts) - reference[0]
    levels = sorted({p[-1] for p in pts}, reverse=True)
    total = 0.0
    for i, level in enumerate(levels):
        lower = levels[i + 1] if i + 1 < len(levels) else reference[-1]
        slice_points = [p[:-1] for p in pts if p[-1] >= level]
        total += (level - lower) * hypervolume(slice_points, reference[:-1])
    return total
