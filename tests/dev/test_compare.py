"""Optimizer comparison: curves from studies, the table over seeds, the plot."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from evomerge.search.trial_record import FAILURE
from evomerge_dev.analysis.compare import (
    RunResult,
    best_so_far,
    markdown_table,
    plot_curves,
    summarize,
)


def result(sampler: str, seed: int, curve: list[float | None], test: float) -> RunResult:
    return RunResult(sampler, seed, len(curve), curve, test, 0, 1.0, 2.0 * len(curve))


def test_best_so_far_counts_failed_candidates_but_not_lost_trials() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.2, None, 0.1, "lost", 0.5):
        trial = study.ask()
        if value is None:  # a candidate that failed on its own (NaN, OOM): uses budget
            trial.set_user_attr(FAILURE, "nan: logits")
            study.tell(trial, state=TrialState.FAIL)
        elif value == "lost":  # a dead worker's trial, retried elsewhere: no budget
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    assert best_so_far(study) == [0.2, 0.2, 0.2, 0.5]


def test_summary_is_mean_and_sd_over_seeds_at_each_budget() -> None:
    runs = [
        result("cmaes", 0, [0.1, 0.3, 0.5], 0.4),
        result("cmaes", 1, [0.2, 0.2, 0.7], 0.6),
        result("random", 0, [None, 0.1, 0.2], 0.1),
    ]
    rows = summarize(runs, budgets=[1, 3])
    cmaes, random = rows
    assert cmaes["fitness@1"] == pytest.approx((0.15, 0.0707), abs=1e-4)
    assert cmaes["fitness@3"] == pytest.approx((0.6, 0.1414), abs=1e-4)
    assert cmaes["test"] == pytest.approx((0.5, 0.1414), abs=1e-4)
    assert random["fitness@1"] is None  # no completed trial yet in some seed
    table = markdown_table(rows, [1, 3])
    assert "| cmaes | 0.150 ± 0.071 | 0.600 ± 0.141 | 0.500 ± 0.141 | 2.00 |" in table
    assert "| random | - | 0.200 ± 0.000 |" in table


def test_plot_writes_a_png(tmp_path: Path) -> None:
    runs = [result("pycma", s, [0.1, 0.2 + s / 10, 0.4], 0.3) for s in range(2)]
    plot_curves(runs, tmp_path / "plot.png", "title")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
