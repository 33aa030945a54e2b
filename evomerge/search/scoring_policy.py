"""The estimator inside a search, a policy over the one scorer (scorer.py): which documents a
candidate generates, its (estimated) fitness, racing, the plan stored with the study, and the
winner's full-split re-score.

The plan (evaluate/estimator.py's ItemPlan) is fitted once per run, from the first
`fit_trials` candidates scored in full, and stored as the study user attribute `PLAN_ATTR` (and,
for reading, `estimator_plan.json` in the run directory). The fit is a deterministic function
of those candidates' per-item results and the seed, so workers that fit it at the same time
fit the same plan; each one uses the plan the study holds after its write (the first one
stored), so a resumed search or another worker never fits a different one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.evaluate import Objective, Results, fitness
from evomerge.evaluate.estimator import (
    EstimatorSpec,
    ItemPlan,
    binary_strings,
    columns,
    combine,
    estimate_results,
    fitted_plan,
    full_plan,
    item_column,
    random_plan,
    upper_bound,
)
from evomerge.evaluate.runner import Evaluation
from evomerge.files import write_text_atomic
from evomerge.recipe import Recipe
from evomerge.search.scorer import CandidateScorer, Scored
from evomerge.search.trial_record import TrialRecord

PLAN_ATTR = "estimator_plan"  # study user attr: the fitted ItemPlan (JSON)
RESCORED = "full_rescores"  # study user attr: trial number -> its full-split fitness, items
WINNER = "winner"  # study user attr of a run with estimates: {trial, fitness} on the full split


@dataclass(frozen=True)
class Estimated:
    """A scored candidate and what it cost: documents and tokens generated, whether its
    fitness is an estimate (fewer than all documents), whether racing stopped it."""

    scored: Scored
    items: int
    tokens: int
    estimated: bool
    raced: bool = False
    bits: dict[str, str] = field(default_factory=dict)


class Estimation:
    """One search's estimator: spec, objective, the plan once fitted, and the scorer."""

    def __init__(
        self,
        spec: EstimatorSpec,
        objective: Objective,
        scorer: CandidateScorer,
        run_dir: Path,
        fit_trials: int,
    ) -> None:
        self.spec = spec
        self.objective = objective
        self.scorer = scorer
        self.run_dir = run_dir
        self.fit_trials = fit_trials
        self._plan: ItemPlan | None = None

    def universe(self) -> dict[str, list[int]]:
        """Every objective task's document ids (building the requests once)."""
        return self.scorer.document_ids(dict.fromkeys(c[0] for c in columns(self.objective)))

    def plan(self, study: optuna.Study) -> ItemPlan:
        """The run's plan, or the full plan while the calibration candidates are scored."""
        if self._plan is not None:
            return self._plan
        if self.spec.kind == "full":
            self._plan = full_plan(self.universe())
            return self._plan
        stored = study.user_attrs.get(PLAN_ATTR)
        if stored is None:
            fitted = self._fit(study)
            if fitted is None:
                return full_plan(self.universe())
            study.set_user_attr(PLAN_ATTR, fitted.to_json())
            stored = study.user_attrs[PLAN_ATTR]  # another worker's, if it wrote after us
            text = json.dumps(stored, indent=1) + "\n"
            write_text_atomic(self.run_dir / "estimator_plan.json", text)
        self._plan = ItemPlan.from_json(stored)
        return self._plan

    def _fit(self, study: optuna.Study) -> ItemPlan | None:
        if not self.spec.needs_calibration:
            return random_plan(self.universe(), self.spec.n, self.spec.seed)
        rows = calibration_rows(study, self.fit_trials)
        if rows is None:
            return None
        return fitted_plan(self.spec, self.universe(), self.objective, rows)

    def score(
        self, recipe: Recipe, study: optuna.Study, median: float | None, draw: int | None = None
    ) -> Estimated:
        """Merge, generate the plan's documents (in chunks when racing against `median`, the
        generation's; draw `draw` of them, if given: estimator.redraw=generation), estimate,
        fitness."""
        plan = self.plan(study)
        if draw is not None and not plan.full:
            plan = plan.redrawn(draw, self.spec.seed)
        merge_s, swap_s = self.scorer.load(recipe)
        evs, raced = self._generate(plan, median if self.spec.race else None)
        ev = combine(evs)
        results: Results = estimate_results(plan, ev, self.objective)
        scored = Scored(
            fitness(results, self.objective),
            results,
            merge_s,
            swap_s,
            sum(e.seconds for e in evs),
            sum(e.generate_seconds for e in evs),
        )
        full = plan.full and not raced
        bits = binary_strings(ev, self.objective, plan) if full else {}
        return Estimated(scored, ev.items, ev.tokens, not full, raced, bits)

    def _generate(self, plan: ItemPlan, median: float | None) -> tuple[list[Evaluation], bool]:
        """The plan's documents in one pass, or in chunks until the candidate's upper bound
        falls below the generation's median (racing: one-term objectives)."""
        only = None if plan.full else plan.items
        if median is None:
            return [self.scorer.generate(only)], False
        col = columns(self.objective)[0]
        order = race_order(plan, col[0], self.spec.seed)
        weight = self.objective.terms[0].weight
        evs: list[Evaluation] = []
        seen, hits = 0, 0.0
        for start in range(0, len(order), self.spec.chunk):
            chunk = order[start : start + self.spec.chunk]
            evs.append(self.scorer.generate({col[0]: chunk}))
            values = item_column(evs[-1], col)
            seen, hits = seen + len(chunk), hits + sum(values[i] for i in chunk)
            if stops(hits, seen, len(order), median / weight, self.spec.race_z):
                return evs, True
        return evs, False

    def rescore_winner(
        self, study: optuna.Study, best: FrozenTrial | None, decode: Callable[[FrozenTrial], Recipe]
    ) -> tuple[FrozenTrial | None, float | None, Results | None]:
        """The winner by full-split fitness among the best `rescore_top` candidates by
        (estimated) fitness: (trial, its full fitness, its full metrics). `best`: the run's
        best by its own values (the answer where nothing was estimated). Re-scores are kept in
        the study, so a resumed finish repeats none."""
        if not self.spec.estimates or best is None:
            return best, None if best is None else best.values[0], None
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        top = sorted(done, key=lambda t: (-t.values[0], t.number))[: self.spec.rescore_top]
        kept: dict[str, Any] = dict(study.user_attrs.get(RESCORED, {}))
        for t in top:
            if TrialRecord.of(t).estimated and str(t.number) not in kept:
                self.scorer.load(decode(t))
                ev = self.scorer.generate()
                kept[str(t.number)] = {
                    "fitness": fitness(ev.results, self.objective),
                    "metrics": ev.results,
                    "items": ev.items,
                }
                study.set_user_attr(RESCORED, kept)

        def full(t: FrozenTrial) -> tuple[float, Results | None]:
            rec = TrialRecord.of(t)
            if not rec.estimated:
                return t.values[0], rec.metrics
            return kept[str(t.number)]["fitness"], kept[str(t.number)]["metrics"]

        winner = max(top, key=lambda t: (full(t)[0], -t.number))
        study.set_user_attr(WINNER, {"trial": winner.number, "fitness": full(winner)[0]})
        return winner, *full(winner)


def rescored_items(study: optuna.Study) -> int:
    """Documents generated to re-score estimated finalists on the full fitness split."""
    return sum(int(v["items"]) for v in study.user_attrs.get(RESCORED, {}).values())


def stops(hits: float, seen: int, total: int, target: float, z: float) -> bool:
    """Racing's decision: stop when the upper confidence bound on the mean over all `total`
    documents, after `hits` of `seen`, is below `target` (the median, in metric units)."""
    return seen < total and upper_bound(hits, seen, total, z) < target


def race_order(plan: ItemPlan, task: str, seed: int) -> list[int]:
    """The plan's documents of `task` in a seeded random order (a chunk is a random sample)."""
    items = plan.items[task]
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def calibration_rows(study: optuna.Study, fit_trials: int) -> list[dict[str, str]] | None:
    """The per-item 0/1 strings of the first `fit_trials` candidates scored in full, once every
    trial before the last of them has finished (so every worker reads the same rows); None
    until then."""
    rows: list[dict[str, str]] = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            return None
        bits = TrialRecord.of(t).bits
        if t.state == TrialState.COMPLETE and bits is not None:
            rows.append(bits)
            if len(rows) == fit_trials:
                return rows
    return None
