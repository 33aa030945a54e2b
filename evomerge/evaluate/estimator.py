"""Fitness estimators: from the items a candidate generated to (estimated) full-split metrics.

The evaluator returns per-item results (which documents were generated, each one's metric
values); an estimator maps them to the metrics the whole split would give. `full` scores every
document; `subset` a fixed seeded subset of n documents per task (random, or stratified by the
calibration candidates' item difficulty: one document from each of n equal strata); `irt`
the n anchor documents of a 2PL (or 1PL) item model fitted to the first candidates (see
irt.py). The state a run fits once (the subset, the item model) is an `ItemPlan`, a JSON-able
value stored with the study so that every worker and every resume uses the same one.
`fitness` stays a pure function of the metrics this module returns.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from evomerge.errors import ConfigError, EvaluationError
from evomerge.evaluate.fitness import Objective, Results
from evomerge.evaluate.irt import MODELS, ItemModel, estimate, fit_item_model, strata_anchors
from evomerge.evaluate.objectives import GEN_TOKENS
from evomerge.evaluate.runner import Evaluation

KINDS = ("full", "subset", "irt")
SELECTIONS = ("random", "stratified")
REDRAWS = ("none", "generation")
Column = tuple[str, str]  # (task, metric): one per-item column of the objective


@dataclass(frozen=True)
class EstimatorSpec:
    """configs/estimator/*.yaml, typed (search/config.py parses it). See configs/estimator/
    for each field's why."""

    name: str = "full"
    kind: str = "full"
    n: int = 70  # documents generated per objective task (subset, irt)
    select: str = "random"  # subset: random | stratified
    model: str = "2pl"  # irt: 2pl | 1pl (no discrimination to overfit a narrow calibration)
    fit_trials: int | None = None  # irt, stratified: first trials scored in full; None: 1 gen.
    seed: int = 0  # seeds the subset and the anchor draws
    race: bool = False  # stop a candidate early once it cannot reach its generation's median
    chunk: int = 35  # racing: documents per chunk
    race_z: float = 1.96  # racing: the upper confidence bound's z (two-sided 95%)
    rescore_top: int = 5  # at the end, the best few by estimate are scored on the full split
    redraw: str = "none"  # generation: each generation generates a new draw of the documents

    def __post_init__(self) -> None:
        for key, value, valid in (
            ("kind", self.kind, KINDS),
            ("select", self.select, SELECTIONS),
            ("model", self.model, MODELS),
            ("redraw", self.redraw, REDRAWS),
        ):
            if value not in valid:
                raise ConfigError(f"estimator.{key}: must be one of {valid}, got {value!r}")
        for key, number, low in (("n", self.n, 2), ("chunk", self.chunk, 1)):
            if number < low:
                raise ConfigError(f"estimator.{key}: must be >= {low}, got {number}")
        if self.rescore_top < 1:
            raise ConfigError(f"estimator.rescore_top: must be >= 1, got {self.rescore_top}")
        if self.fit_trials is not None and self.fit_trials < 2:
            raise ConfigError(f"estimator.fit_trials: must be null or >= 2, got {self.fit_trials}")
        if not self.race_z > 0:
            raise ConfigError(f"estimator.race_z: must be > 0, got {self.race_z}")
        if self.redraw != "none" and (
            self.kind == "full" or (self.kind == "subset" and self.select != "random")
        ):
            raise ConfigError(
                f"estimator.redraw: {self.redraw} draws documents anew for kind=irt or a random "
                f"subset; this estimator is kind={self.kind}, select={self.select}"
            )

    @property
    def needs_calibration(self) -> bool:
        """Whether the plan is fitted to the first candidates' per-item results."""
        return self.kind == "irt" or (self.kind == "subset" and self.select == "stratified")

    @property
    def estimates(self) -> bool:
        """Whether some candidates' fitness may come from fewer than all documents."""
        return self.kind != "full" or self.race


@dataclass(frozen=True)
class ItemPlan:
    """What a run fits once: per task, the documents to generate (`items`, in generation order)
    out of all its documents (`universe`), and for irt, per objective column, the item model
    (indices into the universe)."""

    kind: str
    universe: dict[str, list[int]]
    items: dict[str, list[int]]
    models: dict[str, ItemModel] = field(default_factory=dict)  # "task/metric" -> model

    @property
    def full(self) -> bool:
        return self.kind == "full"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "universe": self.universe,
            "items": self.items,
            "models": {k: m.to_json() for k, m in self.models.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ItemPlan:
        return cls(
            kind=str(d["kind"]),
            universe={k: [int(i) for i in v] for k, v in d["universe"].items()},
            items={k: [int(i) for i in v] for k, v in d["items"].items()},
            models={k: ItemModel.from_json(m) for k, m in d.get("models", {}).items()},
        )

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def redrawn(self, draw: int, seed: int) -> ItemPlan:
        """The same plan with its documents drawn anew, a function of (`draw`, `seed`): a random
        subset of the same size per task, or for irt new anchors from the same item model's
        difficulty strata (one per stratum, weighted as before). The fit stays the one stored.

        A search redraws once per generation: CMA-ES ranks a generation's candidates on shared
        documents, so their differences are measured on the same items, while the next
        generation sees other items, so the search cannot climb the luck of one fixed subset."""
        rng_seed = draw_seed(seed, draw)
        if self.kind == "subset":
            n = max(len(v) for v in self.items.values())
            return random_plan(self.universe, n, rng_seed)
        if self.kind != "irt":
            return self
        items: dict[str, list[int]] = {}
        models: dict[str, ItemModel] = {}
        for key, model in self.models.items():
            task = key.rpartition("/")[0]
            anchors, weights = strata_anchors(model.b, len(model.anchors), rng_seed)
            models[key] = replace(model, anchors=anchors, weights=weights)
            ids = self.universe[task]
            items[task] = sorted(set(items.get(task, [])) | {ids[int(i)] for i in anchors})
        return ItemPlan(self.kind, self.universe, items, models)


def draw_seed(seed: int, draw: int) -> int:
    """The seed of draw `draw` of a plan seeded `seed` (independent streams per draw)."""
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


def columns(objective: Objective) -> list[Column]:
    return list(dict.fromkeys((t.task, t.metric) for t in objective.terms))


def column_key(col: Column) -> str:
    return f"{col[0]}/{col[1]}"


def item_column(ev: Evaluation, col: Column) -> dict[int, float]:
    """doc id -> the per-item value of metric `col[1]` of task `col[0]` (a metric named with or
    without its filter, as in the results)."""
    task, metric = col
    values = ev.item_values.get(task, {})
    keys = [k for k in values if k == metric or k.partition(",")[0] == metric]
    if len(keys) != 1:
        raise EvaluationError(
            f"estimator: task {task!r} has no single per-item metric {metric!r}; "
            f"available: {sorted(values)}"
        )
    return dict(zip(ev.item_ids[task], values[keys[0]], strict=True))


def full_plan(universe: Mapping[str, Sequence[int]]) -> ItemPlan:
    u = {k: list(v) for k, v in universe.items()}
    return ItemPlan("full", u, u)


def random_plan(universe: Mapping[str, Sequence[int]], n: int, seed: int) -> ItemPlan:
    """A seeded random subset of n documents per task (all of them where a task has fewer)."""
    rng = np.random.default_rng(seed)
    items = {}
    for task, ids in universe.items():
        pick = rng.permutation(len(ids))[: min(n, len(ids))]
        items[task] = [int(ids[i]) for i in pick]
    return ItemPlan("subset", {k: list(v) for k, v in universe.items()}, items)


def binary_matrix(rows: Sequence[Mapping[str, str]], key: str, size: int) -> np.ndarray:
    """The calibration candidates' 0/1 strings for one column as a (candidates, items) matrix."""
    if any(len(r[key]) != size for r in rows):
        raise EvaluationError(f"estimator: calibration rows of {key!r} differ in length")
    return np.array([[c == "1" for c in r[key]] for r in rows], dtype=np.float64)


def fitted_plan(
    spec: EstimatorSpec,
    universe: Mapping[str, Sequence[int]],
    objective: Objective,
    rows: Sequence[Mapping[str, str]],
) -> ItemPlan:
    """The plan fitted to calibration rows (each: "task/metric" -> 0/1 string over the task's
    universe): irt anchors, or stratified subsets (one item from each of n difficulty strata)."""
    if len(rows) < 2:
        raise EvaluationError(f"estimator: {len(rows)} calibration candidates; need >= 2")
    u = {k: list(v) for k, v in universe.items()}
    items: dict[str, list[int]] = {}
    models: dict[str, ItemModel] = {}
    rng = np.random.default_rng(spec.seed)
    for col in columns(objective):
        task, key = col[0], column_key(col)
        y = binary_matrix(rows, key, len(u[task]))
        n = min(spec.n, len(u[task]))
        if spec.kind == "irt":
            model = fit_item_model(y, n, spec.seed, spec.model)
            models[key] = model
            picked = [int(i) for i in model.anchors]
        else:
            order = np.argsort(y.mean(0), kind="stable")  # easiest last
            strata = np.array_split(order, n)
            picked = [int(s[rng.integers(len(s))]) for s in strata]
        items[task] = sorted(set(items.get(task, [])) | {u[task][i] for i in picked})
    return ItemPlan(spec.kind, u, items, models)


def estimate_results(plan: ItemPlan, ev: Evaluation, objective: Objective) -> Results:
    """The evaluation's metrics with each objective column replaced by its full-split estimate
    (irt: gp-IRT from the anchors; subset: the subset mean, what lm-eval already aggregated)."""
    results = {task: dict(m) for task, m in ev.results.items()}
    if plan.kind != "irt":
        return results
    for col in columns(objective):
        model = plan.models[column_key(col)]
        values = item_column(ev, col)
        ids = plan.universe[col[0]]
        seen = np.array([ids[i] in values for i in model.anchors])
        if not seen.all():  # a raced candidate stopped early: the anchors it generated
            model = model.some_anchors(seen)
        y = np.array([values[ids[i]] for i in model.anchors], dtype=np.float64)
        results[col[0]][col[1]] = estimate(model, y)
    return results


def combine(evs: Sequence[Evaluation]) -> Evaluation:
    """One evaluation from several over disjoint documents (a raced candidate's chunks):
    per-item values joined, metrics the means over all items (mean-aggregated metrics)."""
    if len(evs) == 1:
        return evs[0]
    ids: dict[str, list[int]] = {}
    values: dict[str, dict[str, list[float]]] = {}
    for ev in evs:
        for task, task_ids in ev.item_ids.items():
            ids.setdefault(task, []).extend(task_ids)
            for key, vs in ev.item_values[task].items():
                values.setdefault(task, {}).setdefault(key, []).extend(vs)
    results: Results = {}
    for task, by_key in values.items():
        plain = len({k.partition(",")[2] for k in by_key}) == 1
        results[task] = {
            (k.partition(",")[0] if plain else k): float(np.mean(vs)) for k, vs in by_key.items()
        }
        per_chunk = [(len(e.item_ids[task]), e.results[task]) for e in evs if task in e.item_ids]
        if all(GEN_TOKENS in r for _, r in per_chunk):  # the mean over all items
            total = sum(k * r[GEN_TOKENS] for k, r in per_chunk)
            results[task][GEN_TOKENS] = total / max(sum(k for k, _ in per_chunk), 1)
    return Evaluation(
        results,
        sum(e.seconds for e in evs),
        {},
        sum(e.generate_seconds for e in evs),
        ids,
        values,
        sum(e.tokens for e in evs),
    )


def binary_strings(ev: Evaluation, objective: Objective, plan: ItemPlan) -> dict[str, str]:
    """Per objective column, the 0/1 string over the task's universe of a candidate scored in
    full (what the calibration reads back); {} where some value is not 0 or 1, or a metric
    has no per-item values (e.g. gen_tokens)."""
    out = {}
    for col in columns(objective):
        try:
            values = item_column(ev, col)
        except EvaluationError:
            return {}
        ids = plan.universe[col[0]]
        if any(values.get(i) not in (0.0, 1.0) for i in ids):
            return {}
        out[column_key(col)] = "".join("1" if values[i] == 1.0 else "0" for i in ids)
    return out


def upper_bound(successes: float, seen: int, total: int, z: float) -> float:
    """Upper confidence bound on the mean of `total` 0/1 items after `seen` of them (drawn in
    random order) gave `successes`: normal bound with the finite-population correction and an
    add-one smoothed variance (so 0 of m is not certain)."""
    if seen >= total:
        return successes / seen
    p = (successes + 1) / (seen + 2)
    fpc = (total - seen) / max(total - 1, 1)
    return successes / seen + z * math.sqrt(p * (1 - p) / seen * fpc)
