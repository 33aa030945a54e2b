"""Score one candidate recipe: merge into the live model -> swap -> evaluate -> fitness."""

from __future__ import annotations

import time
from dataclasses import dataclass

from evomerge.evaluate import Backend, Objective, Results, TaskSet, evaluate, fitness
from evomerge.merge import MergeOptions, SourceCache, merge_into_model
from evomerge.recipe import Recipe


@dataclass(frozen=True)
class Scored:
    fitness: float
    results: Results
    merge_s: float
    swap_s: float
    eval_s: float


class CandidateScorer:
    """Holds what lives for the whole search: the backend's live model, the built tasks, and
    the source tensors (preloaded once), so a candidate costs a merge and an evaluation."""

    def __init__(
        self,
        backend: Backend,
        tasks: TaskSet,
        objective: Objective,
        cache: SourceCache,
        options: MergeOptions,
    ) -> None:
        self.backend = backend
        self.tasks = tasks
        self.objective = objective
        self.cache = cache
        self.options = options

    def load(self, recipe: Recipe) -> tuple[float, float]:
        """Write the candidate into the live model; returns (merge seconds, swap seconds)."""
        t0 = time.perf_counter()
        merge_into_model(recipe, self.backend.target, self.options, self.cache)
        t1 = time.perf_counter()
        self.backend.commit_weights()
        return t1 - t0, time.perf_counter() - t1

    def score(self, recipe: Recipe) -> Scored:
        merge_s, swap_s = self.load(recipe)
        ev = evaluate(self.backend, self.tasks)
        return Scored(fitness(ev.results, self.objective), ev.results, merge_s, swap_s, ev.seconds)

    def evaluate_on(self, recipe: Recipe, tasks: TaskSet) -> Results:
        self.load(recipe)
        return evaluate(self.backend, tasks).results
