"""The search loop, as in the paper: ask -> decode -> merge -> evaluate -> tell -> record."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from tqdm import tqdm

from evomerge.errors import EvomergeError, MergeError, RecipeError
from evomerge.evaluate import CandidateFailed, Results, TaskSet, load_tasks, make_backend
from evomerge.genome import GenomeSpace
from evomerge.merge import MergeOptions, SourceCache
from evomerge.merge.lora import split_adapter
from evomerge.merge.stages import dump_stages
from evomerge.recipe import Recipe, dump_recipe
from evomerge.search.config import SearchConfig
from evomerge.search.dfs_space import ps_dfs_stages
from evomerge.search.front import front_summary
from evomerge.search.objectives import RunGoals, describe, primary_value, run_goals
from evomerge.search.scorer import CandidateScorer
from evomerge.search.space import build_space
from evomerge.search.study import (
    FAILURE,
    SURPLUS,
    beat_before_parameters,
    best_trial,
    budget_held,
    budget_held_elsewhere,
    open_study,
    trials_done,
)


class CandidateError(EvomergeError):
    """A candidate failed (its trial is FAIL with a reason); the search goes on."""


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


def run_search(cfg: SearchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the search of `cfg.run` until its trial budget is used; returns the
    summary also written to `<run_dir>/summary.json`."""
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    # lm-eval and transformers draw a bar per request batch; ours (explicit disable=) stays.
    os.environ.setdefault("TQDM_DISABLE", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    space = build_space(cfg)
    study = open_study(cfg, space)
    scorer = make_scorer(cfg, space)
    goals = run_goals(cfg, study, scorer)
    stop, budget = StopFlag(), cfg.optimizer.n_trials
    worker = f"{socket.gethostname()}:{os.getpid()}"
    best_number = -1
    with (
        stop.installed(),
        tqdm(
            total=budget,
            initial=min(trials_done(study), budget),
            desc=cfg.run,
            unit="cand",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        while trials_done(study) < budget and not stop.requested:
            if budget_held_elsewhere(study, budget, cfg.heartbeat_s):
                continue
            try:
                study.optimize(
                    lambda trial: objective(trial, space, scorer, worker, budget, goals),
                    n_trials=1,
                    catch=(CandidateError,),
                )
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
                if not taken_over(e):
                    raise
                # Another worker saw this one's heartbeat go stale (a stalled machine) and
                # failed the trial; its retry evaluates the genome. Nothing is counted twice.
                tqdm.write(f"{worker}: trial failed by another worker ({e}); going on")
            best_number = record(cfg, study, space, bar, best_number)
    return finish(cfg, study, space, scorer)


def taken_over(e: Exception) -> bool:
    """Optuna's error for writing to (or telling) a trial that is already finished."""
    return isinstance(e, optuna.exceptions.UpdateFinishedTrialError) or str(e).startswith(
        "Cannot tell a FAIL trial"
    )


def objective(
    trial: optuna.Trial,
    space: GenomeSpace,
    scorer: CandidateScorer,
    worker: str,
    budget: int,
    goals: RunGoals,
) -> float | list[float]:
    if budget_held(trial.study, before=trial.number) >= budget:
        # Another worker took the last place between our check and this trial's creation:
        # this one gives way before it samples anything (PRUNED, not counted, no genome).
        trial.set_user_attr(SURPLUS, True)
        raise optuna.TrialPruned("the trial budget is already held by earlier trials")
    beat_before_parameters(trial)
    x = np.array([trial.suggest_float(name, 0.0, 1.0) for name in space.names])
    try:
        recipe = space.decode(x)
    except RecipeError as e:  # a genome that is no model, e.g. a data-flow path with no layer
        trial.set_user_attr(FAILURE, f"genome: {e}")
        raise CandidateError(f"trial {trial.number}: genome: {e}") from e
    trial.set_user_attr("recipe_sha256", recipe_hash(recipe))
    trial.set_user_attr("worker", worker)
    try:
        scored = scorer.score(recipe)
    except (CandidateFailed, MergeError) as e:
        reason = e.reason if isinstance(e, CandidateFailed) else "merge"
        trial.set_user_attr(FAILURE, f"{reason}: {e}")
        raise CandidateError(f"trial {trial.number}: {reason}: {e}") from e
    trial.set_user_attr("metrics", scored.results)
    trial.set_user_attr("merge_s", scored.merge_s)
    trial.set_user_attr("swap_s", scored.swap_s)
    trial.set_user_attr("eval_s", scored.eval_s)
    trial.set_user_attr("generate_s", scored.generate_s)
    return goals.tell(trial, scored.results)


def progress_fields(
    best: optuna.trial.FrozenTrial, last: optuna.trial.FrozenTrial
) -> dict[str, str]:
    """The progress bar's postfix: best and latest fitness, and the latest candidate's seconds.

    A latest fitness of 0.0 is shown as 0.0000 (a candidate that scored nothing), never as nan.
    """
    secs = (last.user_attrs.get("merge_s", 0) + last.user_attrs.get("eval_s", 0)) or None
    value = primary_value(last)
    value = float("nan") if value is None else value
    return {
        "best": f"{primary_value(best) or 0.0:.4f}",
        "last": f"{value:.4f}",
        "s_per_cand": f"{secs:.2f}" if secs else "-",
    }


def record(
    cfg: SearchConfig, study: optuna.Study, space: GenomeSpace, bar: tqdm, best_number: int
) -> int:
    """Advance the progress bar; rewrite best_recipe.yaml when the best trial changed."""
    done = trials_done(study)
    bar.update(min(done, budget_of(bar)) - int(bar.n))
    best = best_trial(study)
    if best is None:
        return best_number
    # The latest scored candidate (any worker's); `study.trials` would deep-copy them all.
    scored = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    last = max(scored, key=lambda t: t.number)
    bar.set_postfix(progress_fields(best, last), refresh=False)
    if best.number != best_number:
        write_best_recipe(cfg.run_dir, genome_recipe(space, best), best)
    return best.number


def budget_of(bar: tqdm) -> int:
    return int(bar.total or 0)


def genome_recipe(space: GenomeSpace, trial: optuna.trial.FrozenTrial) -> Recipe:
    return space.decode(np.array([trial.params[n] for n in space.names]))


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(dump_recipe(recipe).encode()).hexdigest()


def write_best_recipe(run_dir: Path, recipe: Recipe, trial: optuna.trial.FrozenTrial) -> None:
    header = (
        f"# best candidate of this run so far: trial {trial.number}, {describe(trial)}\n"
        f"# merge it: python -m evomerge merge {run_dir / 'best_recipe.yaml'} OUT_DIR\n"
    )
    write_text_atomic(run_dir / "best_recipe.yaml", header + dump_recipe(recipe))


def write_standalone_recipe(
    cfg: SearchConfig, recipe: Recipe, trial: optuna.trial.FrozenTrial
) -> None:
    """PS+DFS: the PS merge and the path in one two-stage file that needs only the sources."""
    path = cfg.run_dir / "best_recipe_standalone.yaml"
    header = (
        f"# best candidate of this run: trial {trial.number}, {describe(trial)}; stage\n"
        f"# ps_model re-merges the PS result, then the path runs over it:\n"
        f"# python -m evomerge merge {path} OUT_DIR\n"
    )
    write_text_atomic(path, header + dump_stages(ps_dfs_stages(cfg, recipe)))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def make_scorer(cfg: SearchConfig, space: GenomeSpace) -> CandidateScorer:
    template = split_adapter(space.template_model)[0]  # a LoRA source: its base's architecture
    backend = make_backend(template, cfg.evaluator, host_device=cfg.merge_on)
    tasks = load_tasks(cfg.task.goals.tasks, cfg.evaluator, extra_paths=cfg.task.include)
    options = MergeOptions(device=cfg.merge_on, random_seed=cfg.seed, progress=False)
    return CandidateScorer(backend, tasks, cfg.task.objective, SourceCache(preload=True), options)


def candidate_seconds(trials: list[optuna.trial.FrozenTrial]) -> float:
    """Seconds spent on candidates that were scored or failed as candidates.

    A trial abandoned by a killed worker (failed later by the heartbeat check) is left out: its
    start-to-fail span is the downtime, not the candidate's time.
    """
    return sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None
        and t.datetime_start is not None
        and (t.state == optuna.trial.TrialState.COMPLETE or FAILURE in t.user_attrs)
    )


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


def finish(
    cfg: SearchConfig, study: optuna.Study, space: GenomeSpace, scorer: CandidateScorer
) -> dict[str, Any]:
    """Score the winner on the held-out test tasks (once per winner) and write summary.json."""
    best = best_trial(study)
    summary: dict[str, Any] = {"run": cfg.run, "trials": trials_done(study)}
    if best is None:
        return summary
    recipe = genome_recipe(space, best)
    write_best_recipe(cfg.run_dir, recipe, best)
    if cfg.space.get("kind") == "ps_dfs":
        write_standalone_recipe(cfg, recipe, best)
    test = study.user_attrs.get("test_results", {})
    if cfg.score_test and cfg.task.test and test.get("trial") != best.number:
        tasks = load_tasks(cfg.task.test, cfg.evaluator, extra_paths=cfg.task.include)
        test = {"trial": best.number, "results": scorer.evaluate_on(recipe, tasks)}
        study.set_user_attr("test_results", test)
    summary.update(
        best_trial=best.number,
        fitness=primary_value(best),
        fitness_metrics=best.user_attrs.get("metrics"),
        test_metrics=test.get("results"),
        failed=sum(FAILURE in t.user_attrs for t in study.get_trials(deepcopy=False)),
        candidate_seconds=round(candidate_seconds(study.get_trials(deepcopy=False)), 3),
        recipe_sha256=recipe_hash(recipe),
        written=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    if len(study.directions) > 1 or cfg.task.goals.constraints:
        summary.update(front_summary(study, cfg.task.goals, front_scorer(cfg, space, scorer)))
    write_text_atomic(cfg.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
