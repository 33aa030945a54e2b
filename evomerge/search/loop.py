"""The search loop, as in the paper: ask -> decode -> merge -> evaluate -> tell -> record."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import optuna
from tqdm import tqdm

from evomerge.errors import EvomergeError, MergeError, RecipeError
from evomerge.evaluate import CandidateFailed
from evomerge.search.budget import (
    FAILURE,
    Ledger,
    beat_before_parameters,
    budget_held_elsewhere,
    surplus,
)
from evomerge.search.config import SearchConfig
from evomerge.search.estimation import BITS, Estimated, Estimation
from evomerge.search.objectives import RunGoals, run_goals
from evomerge.search.optuna_adapter import finished_elsewhere, generation_of
from evomerge.search.outputs import finish, progress_bar, recipe_hash, record
from evomerge.search.run_space import RunSpace
from evomerge.search.samplers import make_sampler
from evomerge.search.scorer import CandidateScorer, make_scorer
from evomerge.search.space import build_space
from evomerge.search.study import opened_study
from evomerge.search.warmstart import GRID_SIZE, GridStart


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
        run = SearchRun(
            space, make_estimation(cfg, study, scorer), run_goals(cfg, study, scorer), cfg, study
        )
        run_candidates(run, progress=progress)
        return finish(cfg, study, space, run.estimation, run.ledger.refresh())


@dataclass
class SearchRun:
    """What every candidate of one worker's search shares."""

    space: RunSpace
    estimation: Estimation
    goals: RunGoals
    cfg: SearchConfig
    study: optuna.Study
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    ledger: Ledger = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.study, window=self.cfg.optimizer.generation_size)
        self.ledger.refresh()


def run_candidates(run: SearchRun, *, progress: bool = True) -> None:
    """Ask, score and tell candidates until the study's trial budget is used (or Ctrl-C)."""
    cfg, study, ledger = run.cfg, run.study, run.ledger
    budget, best, stop = cfg.optimizer.n_trials, -1, StopFlag()
    grid = GridStart(run.space, lambda x0: make_sampler(cfg.optimizer, run.space, cfg.seed, x0))
    with stop.installed(), progress_bar(cfg, ledger.done, progress) as bar:
        while ledger.done < budget and not stop.requested:  # refreshed by record()
            if budget_held_elsewhere(study, ledger, budget, cfg.heartbeat_s):
                continue  # running trials hold the rest of the budget
            if not grid.before_candidate(study):
                continue  # grid points are being scored elsewhere
            one_trial(study, lambda trial: objective(trial, run), run.worker)
            best = record(cfg, ledger.refresh(), run.space, bar, best)


def make_estimation(cfg: SearchConfig, study: optuna.Study, scorer: CandidateScorer) -> Estimation:
    """The run's estimator; it calibrates on `estimator.fit_trials`, by default the first
    generation, or the grid (space.x0=grid: a spread of candidates)."""
    first = study.user_attrs.get(GRID_SIZE) or cfg.optimizer.generation_size
    fit_trials = cfg.estimator.fit_trials or first
    return Estimation(cfg.estimator, cfg.task.objective, scorer, cfg.run_dir, fit_trials)


def objective(trial: optuna.Trial, run: SearchRun) -> float | list[float]:
    """One candidate: ask the sampler for a genome, decode it, merge and evaluate it; the
    fitness returned is what Optuna tells the sampler."""
    budget = run.cfg.optimizer.n_trials
    if surplus(trial, run.ledger, budget):  # another worker took the last place: give way
        raise optuna.TrialPruned("the trial budget is already held by earlier trials")
    beat_before_parameters(trial)
    x = np.array([trial.suggest_float(name, 0.0, 1.0) for name in run.space.names])  # ask
    try:
        recipe = run.space.decode(x)  # decode
    except RecipeError as e:  # a genome that is no model, e.g. a data-flow path with no layer
        fail(trial, "genome", e)
    trial.set_user_attr("recipe_sha256", recipe_hash(recipe))
    trial.set_user_attr("worker", run.worker)
    draw = None  # estimator.redraw=generation: the generation's draw of documents
    if run.cfg.estimator.redraw == "generation":
        draw = generation_of(trial, run.cfg.optimizer.generation_size)
    try:  # merge -> evaluate (on the estimator's documents)
        est = run.estimation.score(recipe, trial.study, run.ledger.median(), draw)
    except (CandidateFailed, MergeError) as e:
        fail(trial, e.reason if isinstance(e, CandidateFailed) else "merge", e)
    record_scored(trial, est)
    if draw is not None and est.estimated:
        trial.set_user_attr("draw", draw)  # the draw of documents it generated
    return run.goals.tell(trial, est.scored.results)  # tell: the objectives


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


def record_scored(trial: optuna.Trial, est: Estimated) -> None:
    scored = est.scored
    trial.set_user_attr("metrics", scored.results)
    trial.set_user_attr("merge_s", scored.merge_s)
    trial.set_user_attr("swap_s", scored.swap_s)
    trial.set_user_attr("eval_s", scored.eval_s)
    trial.set_user_attr("generate_s", scored.generate_s)
    trial.set_user_attr("items", est.items)  # fitness documents generated (all tasks)
    trial.set_user_attr("tokens", est.tokens)
    trial.set_user_attr("estimated", est.estimated)  # fitness from fewer than all documents
    if est.raced:
        trial.set_user_attr("raced", True)
    if est.bits:  # per-item correctness: calibration of subset/irt, estimator_quality.py
        trial.set_user_attr(BITS, est.bits)


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
