"""Fitness: a pure function of evaluation results (a weighted sum of named task metrics)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from evomerge.errors import ConfigError, EvaluationError

Results = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Term:
    task: str
    metric: str
    weight: float = 1.0


@dataclass(frozen=True)
class Objective:
    """fitness = sum(weight * results[task][metric]) over the terms."""

    terms: tuple[Term, ...]

    def __post_init__(self) -> None:
        if not self.terms:
            raise ConfigError("task.fitness: needs at least one {task, metric, weight} term")
        for i, t in enumerate(self.terms):
            if not math.isfinite(t.weight):
                raise ConfigError(f"task.fitness[{i}].weight: must be finite, got {t.weight}")

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(t.task for t in self.terms))


def fitness(results: Results, objective: Objective) -> float:
    """Weighted sum of the objective's metrics; a missing metric is an error, not a zero."""
    total = 0.0
    for t in objective.terms:
        if t.task not in results:
            raise EvaluationError(
                f"fitness: task {t.task!r} missing from results {sorted(results)}"
            )
        metrics = results[t.task]
        if t.metric not in metrics:
            raise EvaluationError(
                f"fitness: metric {t.metric!r} missing for task {t.task!r}; "
                f"available: {sorted(metrics)}"
            )
        total += t.weight * float(metrics[t.metric])
    return total
