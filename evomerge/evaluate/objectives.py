"""Objectives and constraints of a search: named, directed weighted sums of task metrics.

`task.objectives` lists the objectives (the first is the primary one); `task.constraints`
bounds further weighted sums, by a number (`min` / `max`) or by a share of a named source
model's own score (`min_share`, with `source`). `task.fitness` alone is the one-objective case:
one objective named `fitness`, maximized. Everything here is a pure function of evaluation
results; the source models' scores are measured once per run and passed in.

Besides the tasks' own metrics, every generating task reports `gen_tokens`, the mean number of
generated tokens per item (see evaluate/runner.py), so reasoning length is an objective like
any other: `{name: tokens, direction: minimize, terms: [{task: T, metric: gen_tokens}]}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evomerge.errors import ConfigError, EvaluationError
from evomerge.evaluate.fitness import Objective, Results, Term, fitness

DIRECTIONS = ("maximize", "minimize")
GEN_TOKENS = "gen_tokens"  # the evaluator's metric: mean generated tokens per item
SourceScores = dict[str, Results]  # source name -> its results on the constraints' tasks


@dataclass(frozen=True)
class Goal:
    """One objective: a weighted sum of metrics, to maximize or minimize."""

    name: str
    terms: Objective
    direction: str = "maximize"


@dataclass(frozen=True)
class Constraint:
    """`value(terms) >= min`, `value <= max`, or `value >= min_share * value(source)`."""

    name: str
    terms: Objective
    min: float | None = None
    max: float | None = None
    min_share: float | None = None
    source: str | None = None

    def bound(self, sources: SourceScores) -> tuple[str, float]:
        """(">=" or "<=", the threshold) given the sources' own results."""
        if self.min_share is not None:
            assert self.source is not None  # parse_constraint pairs them
            if self.source not in sources:
                raise EvaluationError(
                    f"constraint {self.name!r}: no score of source {self.source!r}"
                )
            return ">=", self.min_share * fitness(sources[self.source], self.terms)
        if self.min is not None:
            return ">=", self.min
        assert self.max is not None
        return "<=", self.max

    def violation(self, results: Results, sources: SourceScores) -> float:
        """How far the results are from satisfying the constraint; <= 0 means satisfied
        (Optuna's convention for `constraints_func`)."""
        op, threshold = self.bound(sources)
        value = fitness(results, self.terms)
        return threshold - value if op == ">=" else value - threshold


@dataclass(frozen=True)
class Objectives:
    """The goals of a search (first = primary) and its constraints."""

    goals: tuple[Goal, ...]
    constraints: tuple[Constraint, ...] = ()

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.goals]

    @property
    def directions(self) -> list[str]:
        return [g.direction for g in self.goals]

    @property
    def primary(self) -> Objective:
        return self.goals[0].terms

    @property
    def tasks(self) -> list[str]:
        """Every task an objective or a constraint reads, each once, in order."""
        terms = [t for g in self.goals for t in g.terms.terms]
        terms += [t for c in self.constraints for t in c.terms.terms]
        return list(dict.fromkeys(t.task for t in terms))

    @property
    def sources(self) -> list[str]:
        """Source models whose own score a constraint needs."""
        return list(dict.fromkeys(c.source for c in self.constraints if c.source is not None))

    def source_tasks(self, source: str) -> list[str]:
        terms = [t for c in self.constraints if c.source == source for t in c.terms.terms]
        return list(dict.fromkeys(t.task for t in terms))

    def values(self, results: Results) -> list[float]:
        return [fitness(results, g.terms) for g in self.goals]

    def violations(self, results: Results, sources: SourceScores) -> list[float]:
        return [c.violation(results, sources) for c in self.constraints]


def parse_objectives(task: Mapping[str, Any], source_names: Sequence[str] = ()) -> Objectives:
    """`task.objectives` + `task.constraints`, or `task.fitness`; errors name the key path."""
    has_fitness = task.get("fitness") is not None
    has_objectives = task.get("objectives") is not None
    if has_fitness == has_objectives:
        raise ConfigError(
            "task: set exactly one of `fitness` (one objective) and `objectives` (a list), "
            f"got {'both' if has_fitness else 'neither'}"
        )
    if has_fitness:
        goals: tuple[Goal, ...] = (Goal("fitness", parse_terms(task["fitness"], "task.fitness")),)
    else:
        goals = parse_goals(task["objectives"])
    raw = task.get("constraints") or []
    if not isinstance(raw, list):
        raise ConfigError(f"task.constraints: expected a list, got {_preview(raw)}")
    constraints = tuple(
        parse_constraint(c, f"task.constraints[{i}]", source_names) for i, c in enumerate(raw)
    )
    names = [g.name for g in goals] + [c.name for c in constraints]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"task.objectives/constraints: names must be unique, got {duplicates}")
    return Objectives(goals, constraints)


def parse_goals(raw: Any) -> tuple[Goal, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            f"task.objectives: expected a non-empty list of {{name, direction, terms}}, "
            f"got {_preview(raw)}"
        )
    goals = []
    for i, item in enumerate(raw):
        path = f"task.objectives[{i}]"
        entry = _entry(item, path, ("name", "direction", "terms"))
        direction = entry.get("direction", "maximize")
        if direction not in DIRECTIONS:
            raise ConfigError(
                f"{path}.direction: must be maximize or minimize, got {_preview(direction)}"
            )
        goals.append(
            Goal(entry["name"], parse_terms(entry.get("terms"), f"{path}.terms"), direction)
        )
    return tuple(goals)


def parse_constraint(item: Any, path: str, source_names: Sequence[str]) -> Constraint:
    keys = ("name", "terms", "min", "max", "min_share", "source")
    entry = _entry(item, path, keys)
    bounds = [k for k in ("min", "max", "min_share") if entry.get(k) is not None]
    if len(bounds) != 1:
        raise ConfigError(f"{path}: set exactly one of min, max, min_share; got {bounds or 'none'}")
    for key in bounds:
        if not _is_number(entry[key]):
            raise ConfigError(f"{path}.{key}: must be a finite number, got {_preview(entry[key])}")
    source = entry.get("source")
    if (source is None) != (bounds[0] != "min_share"):
        raise ConfigError(f"{path}: `source` goes with min_share (a share of its own score)")
    if source is not None and source_names and source not in source_names:
        raise ConfigError(
            f"{path}.source: {_preview(source)} is not a source of this run; "
            f"sources: {list(source_names)}"
        )
    return Constraint(
        name=entry["name"],
        terms=parse_terms(entry.get("terms"), f"{path}.terms"),
        source=None if source is None else str(source),
        **{key: float(entry[key]) for key in bounds},
    )


def parse_terms(raw: Any, path: str) -> Objective:
    """`[{task, metric, weight?}, ...]` -> Objective (a weighted sum)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            f"{path}: expected a non-empty list of {{task, metric, weight}}, got {_preview(raw)}"
        )
    terms = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or "task" not in item or "metric" not in item:
            raise ConfigError(
                f"{path}[{i}]: expected a mapping with keys task, metric (and optional "
                f"weight), got {_preview(item)}"
            )
        unknown = sorted(set(item) - {"task", "metric", "weight"})
        if unknown:
            raise ConfigError(f"{path}[{i}]: unknown key(s) {unknown}; valid: task, metric, weight")
        weight = item.get("weight", 1.0)
        if not _is_number(weight):
            raise ConfigError(
                f"{path}[{i}].weight: must be a finite number, got {_preview(weight)}"
            )
        terms.append(Term(str(item["task"]), str(item["metric"]), float(weight)))
    return Objective(tuple(terms))


def _entry(item: Any, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ConfigError(
            f"{path}: expected a mapping with keys {list(keys)}, got {_preview(item)}"
        )
    unknown = sorted(set(item) - set(keys))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: {list(keys)}")
    name = item.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"{path}.name: must be a name like keep_math, got {_preview(name)}")
    return dict(item)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
