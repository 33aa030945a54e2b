"""The report's view of a multi-objective run: a scatter per objective pair (every scored
candidate, the front, the chosen member marked) and a table of the front's members."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
from optuna.trial import TrialState

from evomerge.search.front import FRONT_TEST
from evomerge.search.goals import OBJECTIVE_NAMES
from evomerge.search.pareto import chosen, feasible, pareto_front


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
