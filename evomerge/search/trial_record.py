"""One trial's record in the study: what the search keeps for each candidate (as Optuna user
attributes, which optuna-dashboard shows as they are), written by the functions below and read
back only by `TrialRecord.of`. Every reader (outputs, report, export, budget, estimation)
takes a `TrialRecord`, never an attribute by its string key.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from evomerge.errors import SearchError

Results = dict[str, dict[str, float]]

# The user attribute keys: the study's on-disk format (runs written before stay readable).
RECIPE_SHA256 = "recipe_sha256"
WORKER = "worker"
METRICS = "metrics"
TIMES = ("merge_s", "swap_s", "eval_s", "generate_s")  # seconds of the candidate's steps
ITEMS = "items"  # fitness documents generated (all tasks)
TOKENS = "tokens"
ESTIMATED = "estimated"  # fitness from fewer than all documents
RACED = "raced"
BITS = "item_bits"  # "task/metric" -> 0/1 per document, when scored in full
DRAW = "draw"  # the draw of documents it generated (estimator.redraw=generation)
FAILURE = "failure_reason"  # a candidate that failed (nan, oom, timeout, merge, genome)
SURPLUS = "surplus"  # a trial created after the budget was held (PRUNED, unused)
OBJECTIVES = "objectives"  # objective name -> value, in a run of several objectives


@dataclass(frozen=True)
class TrialRecord:
    """What the search recorded for one trial; None (or False, 0) where it recorded nothing."""

    recipe_sha256: str | None = None
    worker: str | None = None
    metrics: Results | None = None
    merge_s: float | None = None
    swap_s: float | None = None
    eval_s: float | None = None
    generate_s: float | None = None
    items: int | None = None  # None: a run from before per-trial accounting
    tokens: int = 0
    estimated: bool = False
    raced: bool = False
    bits: dict[str, str] | None = None
    draw: int | None = None
    failure: str | None = None
    surplus: bool = False
    objectives: dict[str, float] | None = None

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        """The one reader of a trial's record."""
        a = trial.user_attrs
        items = a.get(ITEMS)
        return cls(
            recipe_sha256=a.get(RECIPE_SHA256),
            worker=a.get(WORKER),
            metrics=a.get(METRICS),
            merge_s=a.get("merge_s"),
            swap_s=a.get("swap_s"),
            eval_s=a.get("eval_s"),
            generate_s=a.get("generate_s"),
            items=None if items is None else int(items),
            tokens=int(a.get(TOKENS, 0)),
            estimated=bool(a.get(ESTIMATED)),
            raced=bool(a.get(RACED)),
            bits=a.get(BITS),
            draw=a.get(DRAW),
            failure=None if FAILURE not in a else str(a[FAILURE]),
            surplus=bool(a.get(SURPLUS)),
            objectives=a.get(OBJECTIVES),
        )

    @property
    def failed(self) -> bool:
        """A candidate that failed on its own (it used budget), not one lost with its worker."""
        return self.failure is not None

    @property
    def times(self) -> tuple[float, float, float, float] | None:
        """(merge, swap, eval, generate) seconds, where all four were recorded."""
        t = (self.merge_s, self.swap_s, self.eval_s, self.generate_s)
        return None if any(x is None for x in t) else t  # type: ignore[return-value]


def write_candidate(trial: optuna.Trial, recipe_sha256: str, worker: str) -> None:
    """What is known once the genome decoded: its recipe's hash and who scores it."""
    trial.set_user_attr(RECIPE_SHA256, recipe_sha256)
    trial.set_user_attr(WORKER, worker)


def write_scored(
    trial: optuna.Trial,
    *,
    metrics: Results,
    times: tuple[float, float, float, float],
    items: int,
    tokens: int,
    estimated: bool,
    raced: bool,
    bits: dict[str, str],
) -> None:
    """A scored candidate: its metrics, the seconds of its steps and what it generated."""
    trial.set_user_attr(METRICS, metrics)
    for key, seconds in zip(TIMES, times, strict=True):
        trial.set_user_attr(key, seconds)
    trial.set_user_attr(ITEMS, items)
    trial.set_user_attr(TOKENS, tokens)
    trial.set_user_attr(ESTIMATED, estimated)
    if raced:
        trial.set_user_attr(RACED, True)
    if bits:  # per-item correctness: calibration of subset/irt, estimator_quality.py
        trial.set_user_attr(BITS, bits)


def write_draw(trial: optuna.Trial, draw: int) -> None:
    trial.set_user_attr(DRAW, draw)


def write_failure(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(FAILURE, reason)


def write_objectives(trial: optuna.Trial, named: dict[str, float]) -> None:
    trial.set_user_attr(OBJECTIVES, named)


def write_surplus(trial: optuna.Trial) -> None:
    trial.set_user_attr(SURPLUS, True)


def primary_value(trial: FrozenTrial) -> float | None:
    """The first objective's value (the fitness of a one-objective run); None if unscored."""
    return None if not trial.values else float(trial.values[0])


def describe(trial: FrozenTrial) -> str:
    """`fitness 0.43` or `target 0.41, math_en 0.85, lang_ja 0.93` for file headers."""
    named = TrialRecord.of(trial).objectives
    if named:
        return ", ".join(f"{k} {v!r}" for k, v in named.items())
    value = primary_value(trial)
    if value is None:
        raise SearchError(f"trial {trial.number} has no value")
    return f"fitness {value!r}"
