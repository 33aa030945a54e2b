"""A run's objectives at work: the sources' own scores (measured once per run, stored with the
study) and each trial's objective values and constraint values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection

from evomerge.errors import SearchError
from evomerge.evaluate import EvalSettings, Results, load_tasks
from evomerge.evaluate.objectives import Objectives, SourceScores
from evomerge.model_ref import resolve_reference
from evomerge.recipe import ModelSpec, Recipe
from evomerge.search.config import ModelsSpec, TaskSpec
from evomerge.search.pareto import OBJECTIVE_NAMES
from evomerge.search.scorer import CandidateScorer
from evomerge.search.trial_record import write_objectives

SOURCE_SCORES = "source_scores"  # study user attr: {source: {task: {metric: value}}}


@dataclass(frozen=True)
class RunGoals:
    """The objectives of a run and the source scores its constraints compare against."""

    objectives: Objectives
    sources: SourceScores

    def tell(self, trial: optuna.Trial, results: Results) -> float | list[float]:
        """Record the candidate's objective and constraint values on its trial; returns what
        the objective function hands Optuna (one value, or one per objective)."""
        values = self.objectives.values(results)
        names = self.objectives.names
        if len(values) > 1:
            write_objectives(trial, dict(zip(names, values, strict=True)))
        for c, v in zip(
            self.objectives.constraints,
            self.objectives.violations(results, self.sources),
            strict=True,
        ):
            trial.set_constraint(c.name, v)
        return values if len(values) > 1 else values[0]


def study_directions(objectives: Objectives) -> list[StudyDirection]:
    return [
        StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE
        for d in objectives.directions
    ]


def check_directions(study: optuna.Study, objectives: Objectives, run: str) -> None:
    """A run resumed with other objectives would mix values of different meaning."""
    stored = study.user_attrs.get(OBJECTIVE_NAMES)
    if list(study.directions) != study_directions(objectives) or (
        stored is not None and stored != objectives.names
    ):
        raise SearchError(
            f"run {run!r}: its study was started with other objectives "
            f"({stored or len(study.directions)}); this task has {objectives.names}; choose a "
            "new run=NAME"
        )
    if stored is None:
        study.set_user_attr(OBJECTIVE_NAMES, objectives.names)


def source_scores(
    study: optuna.Study, objectives: Objectives, score: Callable[[str, list[str]], Results]
) -> SourceScores:
    """Each source that a constraint compares against, scored once on that constraint's
    tasks by `score(source, tasks)`; stored with the study, so a resumed run and every other
    worker reuse the numbers (two workers starting together may both score: same numbers)."""
    stored: SourceScores = dict(study.user_attrs.get(SOURCE_SCORES) or {})
    missing = [s for s in objectives.sources if s not in stored]
    for source in missing:
        stored[source] = score(source, objectives.source_tasks(source))
    if missing:
        study.set_user_attr(SOURCE_SCORES, stored)
    return stored


def source_recipe(models: ModelsSpec, name: str) -> Recipe:
    """A recipe that gives back the source model `name` as it is (linear, weight 1)."""
    model = resolve_reference(dict(models.sources)[name], models.toy_size)
    return Recipe("linear", models=(ModelSpec(model, {"weight": 1.0}),), dtype=models.dtype)


def run_goals(
    task: TaskSpec,
    models: ModelsSpec,
    evaluator: EvalSettings,
    study: optuna.Study,
    scorer: CandidateScorer,
) -> RunGoals:
    """The run's objectives with its sources scored (once per study) where constraints need."""
    objectives = task.goals

    def score(name: str, tasks: list[str]) -> Results:
        task_set = load_tasks(tasks, evaluator, extra_paths=task.include)
        return scorer.evaluate_on(source_recipe(models, name), task_set)

    return RunGoals(objectives, source_scores(study, objectives, score))
