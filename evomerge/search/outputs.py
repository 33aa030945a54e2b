"""What a run writes as it goes: the progress bar, best_recipe.yaml at every improvement, and
summary.json (with the winner's held-out test score) at the end."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from tqdm import tqdm

from evomerge.evaluate import Results, TaskSet, load_tasks
from evomerge.files import write_text_atomic
from evomerge.genome import GenomeSpace
from evomerge.recipe import Recipe, dump_recipe
from evomerge.search.budget import Ledger
from evomerge.search.config import SearchConfig
from evomerge.search.front import front_summary
from evomerge.search.scorer import CandidateScorer
from evomerge.search.scoring_policy import Estimation, rescored_items
from evomerge.search.space import RunSpace
from evomerge.search.trial_record import TrialRecord, describe, primary_value


def progress_bar(cfg: SearchConfig, done: int, enabled: bool) -> tqdm:
    budget = cfg.optimizer.n_trials
    return tqdm(
        total=budget,
        initial=min(done, budget),
        desc=cfg.run,
        unit="cand",
        disable=not enabled,
        dynamic_ncols=True,
    )


def progress_fields(
    best: optuna.trial.FrozenTrial, last: optuna.trial.FrozenTrial
) -> dict[str, str]:
    """The progress bar's postfix: best and latest fitness, and the latest candidate's seconds.

    A latest fitness of 0.0 is shown as 0.0000 (a candidate that scored nothing), never as nan.
    """
    rec = TrialRecord.of(last)
    secs = ((rec.merge_s or 0) + (rec.eval_s or 0)) or None
    value = primary_value(last)
    value = float("nan") if value is None else value
    return {
        "best": f"{primary_value(best) or 0.0:.4f}",
        "last": f"{value:.4f}",
        "s_per_cand": f"{secs:.2f}" if secs else "-",
    }


def record(
    cfg: SearchConfig, ledger: Ledger, space: GenomeSpace, bar: tqdm, best_number: int
) -> int:
    """Advance the progress bar; rewrite best_recipe.yaml when the best trial changed."""
    bar.update(min(ledger.done, int(bar.total or 0)) - int(bar.n))
    best, last = ledger.best, ledger.last_complete  # any worker's
    if best is None or last is None:
        return best_number
    bar.set_postfix(progress_fields(best, last), refresh=False)
    if best.number != best_number:
        write_best_recipe(cfg.run_dir, genome_recipe(space, best), best)
    return best.number


def genome_recipe(space: GenomeSpace, trial: optuna.trial.FrozenTrial) -> Recipe:
    return space.decode(np.array([trial.params[n] for n in space.names]))


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(dump_recipe(recipe).encode()).hexdigest()


def write_best_recipe(
    run_dir: Path, recipe: Recipe, trial: optuna.trial.FrozenTrial, full: float | None = None
) -> None:
    """best_recipe.yaml; `full`: the trial's full-split fitness where its own is an estimate."""
    told = describe(trial)
    if TrialRecord.of(trial).estimated:
        told = f"estimated {told}" if full is None else f"fitness {full!r} (estimate: {told})"
    header = (
        f"# best candidate of this run so far: trial {trial.number}, {told}\n"
        f"# merge it: python -m evomerge merge {run_dir / 'best_recipe.yaml'} OUT_DIR\n"
    )
    write_text_atomic(run_dir / "best_recipe.yaml", header + dump_recipe(recipe))


def finish(
    cfg: SearchConfig, study: optuna.Study, space: RunSpace, estimation: Estimation, ledger: Ledger
) -> dict[str, Any]:
    """Score the winner on the full fitness split (where its fitness is an estimate) and on
    the held-out test tasks (once per winner), and write summary.json."""
    scorer = estimation.scorer
    summary: dict[str, Any] = {"run": cfg.run, "trials": ledger.done}
    decode = functools.partial(genome_recipe, space)
    best, value, metrics = estimation.rescore_winner(study, ledger.best, decode)
    if best is None:
        return summary
    recipe = genome_recipe(space, best)
    write_best_recipe(cfg.run_dir, recipe, best, value)
    for name, text in space.winner_files(cfg.run_dir, recipe, best).items():
        write_text_atomic(cfg.run_dir / name, text)
    test = study.user_attrs.get("test_results", {})
    if cfg.score_test and cfg.task.test and test.get("trial") != best.number:
        tasks = load_tasks(cfg.task.test, cfg.evaluator, extra_paths=cfg.task.include)
        test = {"trial": best.number, "results": scorer.evaluate_on(recipe, tasks)}
        study.set_user_attr("test_results", test)
    summary.update(
        best_trial=best.number,
        fitness=value,  # on the whole fitness split, never an estimate
        fitness_metrics=metrics or TrialRecord.of(best).metrics,
        test_metrics=test.get("results"),
        failed=ledger.failed,
        candidate_seconds=round(ledger.candidate_seconds, 3),
        recipe_sha256=recipe_hash(recipe),
        estimator=cfg.estimator.name,
        best_estimate=primary_value(best),  # the winner's fitness as the search saw it
        items_generated=ledger.items,  # fitness documents generated by all trials
        tokens_generated=ledger.tokens,
        items_rescored=rescored_items(study),  # documents generated to re-score finalists
        written=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    if len(study.directions) > 1 or cfg.task.goals.constraints:
        summary.update(front_summary(study, cfg.task.goals, front_scorer(cfg, space, scorer)))
    write_text_atomic(cfg.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def front_scorer(
    cfg: SearchConfig, space: GenomeSpace, scorer: CandidateScorer
) -> Callable[[optuna.trial.FrozenTrial], Results] | None:
    """Scores a trial's candidate on the held-out test tasks (built on first use); None
    where the run scores no test split."""
    if not (cfg.score_test and cfg.task.test):
        return None
    built: list[TaskSet] = []

    def score(trial: optuna.trial.FrozenTrial) -> Results:
        if not built:
            built.append(load_tasks(cfg.task.test, cfg.evaluator, extra_paths=cfg.task.include))
        return scorer.evaluate_on(genome_recipe(space, trial), built[0])

    return score
