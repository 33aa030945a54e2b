"""The search loop, as in the paper: ask -> decode -> merge -> evaluate -> tell -> record."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import optuna
from tqdm import tqdm

from evomerge.errors import EvomergeError, MergeError, RecipeError
from evomerge.evaluate import CandidateFailed
from evomerge.genome import GenomeSpace
from evomerge.search.budget import (
    FAILURE,
    beat_before_parameters,
    budget_held_elsewhere,
    surplus,
    trials_done,
)
from evomerge.search.config import SearchConfig
from evomerge.search.objectives import RunGoals, run_goals
from evomerge.search.optuna_adapter import finished_elsewhere
from evomerge.search.outputs import finish, progress_bar, recipe_hash, record
from evomerge.search.run_space import RunSpace
from evomerge.search.scorer import CandidateScorer, Scored, make_scorer
from evomerge.search.space import build_space
from evomerge.search.study import opened_study


class CandidateError(EvomergeError):
    """A candidate failed (its trial is FAIL with a reason); the search goes on."""


def run_search(
    cfg: SearchConfig, *, space: RunSpace | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the search of `cfg.run` until its trial budget is used; returns the
    summary also written to `<run_dir>/summary.json`. `space`: the run's, if built already."""
    space = space or build_space(cfg)
    with opened_study(cfg, space) as study:
        scorer = make_scorer(cfg, space)
        goals = run_goals(cfg, study, scorer)
        worker, budget, best = f"{socket.gethostname()}:{os.getpid()}", cfg.optimizer.n_trials, -1
        stop = StopFlag()
        with stop.installed(), progress_bar(cfg, study, progress) as bar:
            while trials_done(study) < budget and not stop.requested:
                if budget_held_elsewhere(study, budget, cfg.heartbeat_s):
                    continue  # running trials hold the rest of the budget
                one_trial(
                    study,
                    lambda trial: objective(trial, space, scorer, worker, budget, goals),
                    worker,
                )
                best = record(cfg, study, space, bar, best)
        return finish(cfg, study, space, scorer)


def objective(
    trial: optuna.Trial,
    space: GenomeSpace,
    scorer: CandidateScorer,
    worker: str,
    budget: int,
    goals: RunGoals,
) -> float | list[float]:
    """One candidate: ask the sampler for a genome, decode it, merge and evaluate it; the
    fitness returned is what Optuna tells the sampler."""
    if surplus(trial, budget):  # another worker took the last place: give way, unsampled
        raise optuna.TrialPruned("the trial budget is already held by earlier trials")
    beat_before_parameters(trial)
    x = np.array([trial.suggest_float(name, 0.0, 1.0) for name in space.names])  # ask
    try:
        recipe = space.decode(x)  # decode
    except RecipeError as e:  # a genome that is no model, e.g. a data-flow path with no layer
        fail(trial, "genome", e)
    trial.set_user_attr("recipe_sha256", recipe_hash(recipe))
    trial.set_user_attr("worker", worker)
    try:
        scored = scorer.score(recipe)  # merge -> evaluate
    except (CandidateFailed, MergeError) as e:
        fail(trial, e.reason if isinstance(e, CandidateFailed) else "merge", e)
    record_scored(trial, scored)
    return goals.tell(trial, scored.results)  # tell: the objectives (constraints recorded)


def one_trial(study: optuna.Study, objective: Any, worker: str) -> None:
    """Ask, run and tell one trial; a failed candidate is a FAIL trial and the search goes on."""
    try:
        study.optimize(objective, n_trials=1, catch=(CandidateError,))
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
        if not finished_elsewhere(e):
            raise
        # Another worker saw this one's heartbeat go stale (a stalled machine) and failed the
        # trial; its retry evaluates the genome. Nothing is counted twice.
        tqdm.write(f"{worker}: trial failed by another worker ({e}); going on")


def fail(trial: optuna.Trial, reason: str, e: Exception) -> NoReturn:
    trial.set_user_attr(FAILURE, f"{reason}: {e}")
    raise CandidateError(f"trial {trial.number}: {reason}: {e}") from e


def record_scored(trial: optuna.Trial, scored: Scored) -> None:
    trial.set_user_attr("metrics", scored.results)
    trial.set_user_attr("merge_s", scored.merge_s)
    trial.set_user_attr("swap_s", scored.swap_s)
    trial.set_user_attr("eval_s", scored.eval_s)
    trial.set_user_attr("generate_s", scored.generate_s)


@dataclass
class StopFlag:
    """First Ctrl-C: finish the current candidate, then stop. Second: stop now."""

    requested: bool = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            tqdm.write(
                "stopping after the current candidate (Ctrl-C again to stop now)", file=sys.stderr
            )

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
