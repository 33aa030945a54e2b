"""The front of a multi-objective (or constrained) run in summary.json, and its hypervolume
along the run.

Each member of the front is scored once on the held-out test tasks; the scores are kept in
the study (user attr `front_test_results`), so a resumed run or another worker's finish
scores only members that are new.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.evaluate import Results
from evomerge.evaluate.objectives import Objectives
from evomerge.search.budget import counted
from evomerge.search.pareto import (
    chosen,
    feasible,
    front_indices,
    hypervolume,
    oriented,
    pareto_front,
)

FRONT_TEST = "front_test_results"  # study user attr: {trial number: test results}


def objective_values(trial: FrozenTrial, objectives: Objectives) -> dict[str, float]:
    return dict(zip(objectives.names, trial.values or (), strict=True))


def front_summary(
    study: optuna.Study,
    objectives: Objectives,
    score_test: Callable[[FrozenTrial], Results] | None,
) -> dict[str, Any]:
    """summary.json's `objectives`, `constraints`, `chosen` and `pareto` entries."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = pareto_front(done, study.directions)
    best = chosen(done, study.directions)
    stored = study.user_attrs.get(FRONT_TEST) or {}
    tested = dict(stored)
    single = study.user_attrs.get("test_results") or {}
    if "trial" in single:  # the chosen member, scored by the search's own finish
        tested.setdefault(str(single["trial"]), single["results"])
    if score_test is not None:
        for t in front:
            if str(t.number) not in tested:
                tested[str(t.number)] = score_test(t)
    if tested != stored:
        study.set_user_attr(FRONT_TEST, tested)
    return {
        "objectives": [{"name": g.name, "direction": g.direction} for g in objectives.goals],
        "constraints": [c.name for c in objectives.constraints],
        "chosen": {
            "trial": None if best is None else best.number,
            "rule": "the front member best on the primary objective (none feasible: the one "
            "that violates the constraints least)",
        },
        "pareto": [member(t, objectives, tested.get(str(t.number))) for t in front],
    }


def member(trial: FrozenTrial, objectives: Objectives, test: Results | None) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "objectives": objective_values(trial, objectives),
        "constraints": dict(trial.constraints),
        "feasible": feasible(trial),
        "test_metrics": test,
    }


def hypervolume_at(
    trials: Sequence[FrozenTrial],
    directions: Sequence[optuna.study.StudyDirection],
    budgets: Sequence[int],
    reference: Sequence[float],
    *,
    feasible_only: bool = True,
) -> dict[int, float]:
    """Hypervolume of the feasible front among the first `b` counted candidates (by trial
    number), for each budget b; with `feasible_only=False`, of the front of all of them,
    constraints ignored. `reference` is in the oriented space (larger is better: a minimized
    objective's reference is the negated bound)."""
    used = sorted((t for t in trials if counted(t)), key=lambda t: t.number)
    out = {}
    for b in budgets:
        pool = [t for t in used[:b] if t.values is not None]
        if feasible_only:
            pool = [t for t in pool if feasible(t)]
        points = [oriented(t, directions) for t in pool]
        out[b] = hypervolume([points[i] for i in front_indices(points)], tuple(reference))
    return out
