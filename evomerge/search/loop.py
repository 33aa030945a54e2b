"""The search loop, as in the paper: ask -> genome -> recipe -> candidate -> fitness -> tell.

for trial in source:                       # ask (budget, heartbeat, grid warm start)
    recipe = space.decode(genome)          # genome -> recipe
    scored = estimation.score(recipe)      # recipe -> merged candidate -> fitness
    source.tell(trial, goals.tell(...))    # tell the sampler; the trial's record
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler

from evomerge.errors import MergeError, RecipeError
from evomerge.evaluate import CandidateFailed
from evomerge.search.budget import Ledger
from evomerge.search.config import SearchConfig
from evomerge.search.goals import RunGoals, run_goals
from evomerge.search.optuna_adapter import generation_of
from evomerge.search.outputs import finish, progress_bar, recipe_hash, record
from evomerge.search.samplers import make_sampler
from evomerge.search.scorer import CandidateScorer, make_scorer
from evomerge.search.scoring_policy import Estimated, Estimation
from evomerge.search.source import CandidateError, SourceSpec, StopFlag, TrialSource
from evomerge.search.space import RunSpace, build_space
from evomerge.search.study import opened_study
from evomerge.search.trial_record import write_candidate, write_draw, write_scored
from evomerge.search.warmstart import GRID_SIZE


def run_search(
    cfg: SearchConfig, *, space: RunSpace | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the search of `cfg.run` until its trial budget is used; returns the
    summary also written to `<run_dir>/summary.json`. `space`: the run's, if built already."""
    space = space or build_space(cfg)
    with opened_study(cfg, space) as study:
        scorer = make_scorer(
            space.template_model, cfg.evaluator, cfg.task, merge_on=cfg.merge_on, seed=cfg.seed
        )
        goals = run_goals(cfg.task, cfg.models, cfg.evaluator, study, scorer)
        run = SearchRun(space, make_estimation(cfg, study, scorer), goals, cfg, study)
        ledger = run_candidates(run, progress=progress)
        return finish(cfg, study, space, run.estimation, ledger.refresh())


@dataclass
class SearchRun:
    """What every candidate of one worker's search shares."""

    space: RunSpace
    estimation: Estimation
    goals: RunGoals
    cfg: SearchConfig
    study: optuna.Study
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def sampler_from(self, x0: np.ndarray) -> BaseSampler:
        """The run's sampler, CMA-ES started at `x0` (the grid warm start's best point)."""
        return make_sampler(self.cfg.optimizer, self.space, self.cfg.seed, x0)


def run_candidates(run: SearchRun, *, progress: bool = True) -> Ledger:
    """Ask, score and tell candidates until the study's trial budget is used (or Ctrl-C);
    returns the source's ledger."""
    cfg, space, stop, best = run.cfg, run.space, StopFlag(), -1
    spec = SourceSpec(cfg.optimizer.n_trials, cfg.heartbeat_s, cfg.optimizer.generation_size)
    source = TrialSource(run.study, space.names, spec, stop, run.worker, run.sampler_from)
    with stop.installed(), progress_bar(cfg, source.ledger.done, progress) as bar:
        for trial in source:  # ask
            with source.candidate(trial):
                try:
                    recipe = space.decode(source.genome(trial))  # genome -> recipe
                except RecipeError as e:  # a genome that is no model (a path with no layer)
                    raise CandidateError("genome", e) from e
                write_candidate(trial, recipe_hash(recipe), run.worker)
                est = score(run, trial, recipe, source.ledger.median())  # -> fitness
                source.tell(trial, run.goals.tell(trial, est.scored.results))  # tell
            best = record(cfg, source.ledger.refresh(), space, bar, best)
    return source.ledger


def score(run: SearchRun, trial: optuna.Trial, recipe: Any, median: float | None) -> Estimated:
    """Merge and evaluate the candidate on the estimator's documents (racing against the
    generation's `median`); its record goes to the trial."""
    draw = None  # estimator.redraw=generation: the generation's draw of documents
    if run.cfg.estimator.redraw == "generation":
        draw = generation_of(trial, run.cfg.optimizer.generation_size)
    try:
        est = run.estimation.score(recipe, trial.study, median, draw)
    except (CandidateFailed, MergeError) as e:
        raise CandidateError(e.reason if isinstance(e, CandidateFailed) else "merge", e) from e
    s = est.scored
    write_scored(
        trial,
        metrics=s.results,
        times=(s.merge_s, s.swap_s, s.eval_s, s.generate_s),
        items=est.items,
        tokens=est.tokens,
        estimated=est.estimated,
        raced=est.raced,
        bits=est.bits,
    )
    if draw is not None and est.estimated:
        write_draw(trial, draw)
    return est


def make_estimation(cfg: SearchConfig, study: optuna.Study, scorer: CandidateScorer) -> Estimation:
    """The run's estimator; it calibrates on `estimator.fit_trials`, by default the first
    generation, or the grid (space.x0=grid: a spread of candidates)."""
    first = study.user_attrs.get(GRID_SIZE) or cfg.optimizer.generation_size
    fit_trials = cfg.estimator.fit_trials or first
    return Estimation(cfg.estimator, cfg.task.objective, scorer, cfg.run_dir, fit_trials)
