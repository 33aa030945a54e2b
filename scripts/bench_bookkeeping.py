"""Per-candidate bookkeeping at thousands of candidates: the search loop with a candidate that
generates nothing (its fitness a hash of its recipe), SQLite storage, CMA-ES.

    python scripts/bench_bookkeeping.py [--trials 3000] [--out FILE] [--dir /dev/shm]

Reports the seconds per candidate (consecutive trial completions) of the first and last 100
candidates, and, on the finished study, what one candidate's bookkeeping costs: the ledger's
refresh against the study-wide reads the loop made per candidate before it (trials done twice,
budget held twice, running trials, best trial, completed trials).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from evomerge.config import compose
from evomerge.evaluate import Results
from evomerge.recipe import Recipe, dump_recipe
from evomerge.search.budget import budget_held, trials_done
from evomerge.search.config import search_config
from evomerge.search.goals import RunGoals
from evomerge.search.loop import SearchRun, run_candidates
from evomerge.search.scorer import Scored
from evomerge.search.scoring_policy import Estimated
from evomerge.search.space import build_space
from evomerge.search.study import best_trial, opened_study

WINDOW = 100  # candidates averaged at each end


class NoGeneration:
    """An estimator stand-in: fitness from the recipe's hash, 70 items, nothing generated."""

    def score(self, recipe: Recipe, study: optuna.Study, median: float | None) -> Estimated:
        digest = hashlib.sha256(dump_recipe(recipe).encode()).digest()
        value = int.from_bytes(digest[:4]) / 2**32
        results: Results = {"toy_mgsm_ja_fit": {"acc": value}}
        return Estimated(Scored(value, results, 0.0, 0.0, 0.0, 0.0), 70, 140, True)


def previous_reads(study: optuna.Study) -> None:
    """The study reads the loop made per candidate before the ledger."""
    trials_done(study)
    budget_held(study)
    study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    budget_held(study, before=len(study.get_trials(deepcopy=False)) - 1)
    trials_done(study)
    best_trial(study)
    study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def seconds_of(fn: Callable[[], object], repeat: int = 20) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def per_candidate(study: optuna.Study) -> list[float]:
    done = sorted(
        t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete
    )
    return [(b - a).total_seconds() for a, b in itertools.pairwise(done)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3000)
    p.add_argument("--out", type=Path)
    # RAM-backed by default: the figure is the bookkeeping, not the disk's sync latency
    p.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        overrides = ["models.toy_size=small", f"optimizer.n_trials={args.trials}"]
        cfg = search_config(compose("search", [*overrides, f"results_dir={tmp}", "run=books"]))
        space = build_space(cfg)
        with opened_study(cfg, space) as study:
            goals = RunGoals(cfg.task.goals, {})
            run = SearchRun(space, NoGeneration(), goals, cfg, study)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            ledger = run_candidates(run, progress=False)
            wall = time.perf_counter() - t0
            secs = per_candidate(study)
            ledger_s = seconds_of(ledger.refresh)
            previous_s = seconds_of(lambda: previous_reads(study))
    first, last = statistics.mean(secs[:WINDOW]), statistics.mean(secs[-WINDOW:])
    record = {
        "trials": args.trials,
        "wall_s": round(wall, 2),
        "first_100_s_per_candidate": round(first, 5),
        "last_100_s_per_candidate": round(last, 5),
        "last_over_first": round(last / first, 2),
        "ledger_refresh_s": round(ledger_s, 6),  # per call, at the study's final size
        "previous_reads_s": round(previous_s, 6),  # the former per-candidate reads, same size
    }
    print(json.dumps(record))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
