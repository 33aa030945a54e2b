"""The front of a multi-objective (or constrained) run: in summary.json, its hypervolume
along the run, and the report's view of it (a scatter per objective pair, with every scored
candidate, the front and the chosen member marked, and a table of the front's members).

Each member of the front is scored once on the held-out test tasks; the scores are kept in
the study (user attr `front_test_results`), so a resumed run or another worker's finish
scores only members that are new.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.evaluate import Results
from evomerge.evaluate.objectives import Objectives
from evomerge.search.budget import counted
from evomerge.search.pareto import (
    OBJECTIVE_NAMES,
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


def objective_names(study: optuna.Study) -> list[str]:
    stored = study.user_attrs.get(OBJECTIVE_NAMES)
    return list(stored) if stored else [f"objective {i}" for i in range(len(study.directions))]


def plot_front(study: optuna.Study, path: Path) -> None:
    """front.png: one panel per pair of objectives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = objective_names(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = pareto_front(done, study.directions)
    best = chosen(done, study.directions)
    pairs = list(itertools.combinations(range(len(names)), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        groups = [
            (
                [t for t in done if not feasible(t)],
                dict(s=8, color="0.75", label="violates a constraint"),
            ),
            ([t for t in done if feasible(t)], dict(s=8, color="C0", alpha=0.5, label="candidate")),
            (front, dict(s=22, color="C3", label="front")),
        ]
        for trials, style in groups:
            if trials:
                ax.scatter([t.values[i] for t in trials], [t.values[j] for t in trials], **style)
        if best is not None:
            ax.scatter(
                [best.values[i]],
                [best.values[j]],
                s=160,
                marker="*",
                color="gold",
                edgecolors="k",
                label=f"chosen (trial {best.number})",
            )
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    axes[0][0].legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def front_table(study: optuna.Study) -> list[str]:
    """Markdown lines: the front's members, their objectives and held-out test scores."""
    names = objective_names(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = pareto_front(done, study.directions)
    best = chosen(done, study.directions)
    tested = study.user_attrs.get(FRONT_TEST) or {}
    lines = [
        "",
        f"Pareto front: {len(front)} members of {len(done)} scored candidates; chosen: trial "
        f"{best.number if best else '-'} "
        + (
            f"(best {names[0]} among the members, all satisfying every constraint)"
            if front and feasible(front[0])
            else "(no candidate satisfies the constraints: the member that violates them least)"
        ),
        "",
        "| trial | " + " | ".join(names) + " | test |",
        "|---|" + "---:|" * len(names) + "---|",
    ]
    for t in front:
        mark = " (chosen)" if best is not None and t.number == best.number else ""
        values = " | ".join(f"{v:.4f}" for v in t.values)
        test = tested.get(str(t.number))
        lines.append(f"| {t.number}{mark} | {values} | {_test_cell(test)} |")
    return [*lines, "", "![front](front.png)"]


def _test_cell(test: dict[str, dict[str, float]] | None) -> str:
    """`{"task": {"acc": 0.41, ...}}` -> `task 0.4100, ...` (each task's first metric)."""
    if not test:
        return "-"
    return ", ".join(f"{task} {next(iter(m.values())):.4f}" for task, m in test.items() if m)
