"""Score one candidate recipe: merge into the live model -> swap -> evaluate -> fitness.

A data-flow candidate (a passthrough recipe of slices, see merge/path.py) is not merged: the
backend evaluates a path model whose layer list references the source layers, loaded once per
search; each candidate only swaps that list.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from evomerge.evaluate import (
    Backend,
    EvalSettings,
    Objective,
    Results,
    TaskSet,
    evaluate,
    fitness,
    load_tasks,
    make_backend,
)
from evomerge.evaluate.prepared import DocSubset, build_requests
from evomerge.evaluate.runner import Evaluation
from evomerge.merge import MergeOptions, SourceCache, merge_into_model
from evomerge.merge.lora import split_adapter
from evomerge.merge.path import PathModel, PathStep, recipe_path
from evomerge.recipe import Recipe
from evomerge.search.config import TaskSpec


@dataclass(frozen=True)
class Scored:
    fitness: float
    results: Results
    merge_s: float
    swap_s: float
    eval_s: float
    generate_s: float  # the part of eval_s inside the model's generation/scoring calls


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
        self._paths: PathModel | None = None
        self._own_model: nn.Module | None = None  # the backend's model while a path runs

    def load(self, recipe: Recipe) -> tuple[float, float]:
        """Write the candidate into the live model; returns (merge seconds, swap seconds)."""
        steps = recipe_path(recipe)
        if steps is not None:
            return self._load_path(steps)
        if self._own_model is not None:
            self.backend.set_model(self._own_model)
            self._own_model = None
        t0 = time.perf_counter()
        finite = merge_into_model(recipe, self.backend.target, self.options, self.cache)
        t1 = time.perf_counter()
        self.backend.commit_weights(finite)  # checks only what the merge did not
        return t1 - t0, time.perf_counter() - t1

    def _load_path(self, steps: tuple[PathStep, ...]) -> tuple[float, float]:
        """Point the path model at `steps` (sources load on first use); returns (path seconds,
        swap seconds). The backend's own model serves as the source it was loaded from."""
        t0 = time.perf_counter()
        if self._paths is None:
            own = self.backend.target
            self._paths = PathModel(
                self.backend.load_model,
                preloaded={str(getattr(getattr(own, "config", None), "name_or_path", "")): own},
            )
        self._paths.set_path(steps)
        t1 = time.perf_counter()
        if self.backend.target is not self._paths.model:
            self._own_model = self._own_model or self.backend.target
            self.backend.set_model(self._paths.model)
        return t1 - t0, time.perf_counter() - t1

    def generate(self, only: DocSubset | None = None) -> Evaluation:
        """Evaluate the live model on the fitness tasks (with `only`: those documents)."""
        return evaluate(self.backend, self.tasks, only=only)

    def document_ids(self, names: Iterable[str]) -> dict[str, list[int]]:
        """The document ids of the named fitness tasks (their requests built once)."""
        build_requests(self.backend.lm, self.tasks, self.backend.settings)
        return {name: [i for i, _ in self.tasks.docs[name]] for name in names}

    def score(self, recipe: Recipe) -> Scored:
        """Load the candidate and generate every fitness document: its exact fitness."""
        merge_s, swap_s = self.load(recipe)
        ev = self.generate()
        value = fitness(ev.results, self.objective)
        return Scored(value, ev.results, merge_s, swap_s, ev.seconds, ev.generate_seconds)

    def evaluate_on(self, recipe: Recipe, tasks: TaskSet) -> Results:
        """The candidate's results on other tasks (the held-out test, the sources' scores)."""
        self.load(recipe)
        return evaluate(self.backend, tasks).results


def make_scorer(
    template_model: str, evaluator: EvalSettings, task: TaskSpec, *, merge_on: str, seed: int
) -> CandidateScorer:
    """The search's scorer: one backend over the space's template model, the fitness tasks
    built once, and the sources preloaded on `merge_on` (DARE's drops seeded by `seed`)."""
    template = split_adapter(template_model)[0]  # a LoRA source: its base's architecture
    backend = make_backend(template, evaluator, host_device=merge_on)
    tasks = load_tasks(task.goals.tasks, evaluator, extra_paths=task.include)
    options = MergeOptions(device=merge_on, random_seed=seed, progress=False)
    return CandidateScorer(backend, tasks, task.objective, SourceCache(preload=True), options)
