"""Reliability harness: SIGKILL a search or a merge at random moments and check what is left.

Used by tests (a few kills) and scripts/reliability.py (the figures, at full strength). Every
run is a real `python -m evomerge ...` process, killed with SIGKILL (no cleanup, no handler).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
Completed = dict[int, tuple[tuple[tuple[str, float], ...], float]]  # number -> (params, value)


def evomerge(*args: str, log: Path | None = None) -> subprocess.Popen:
    """`python -m evomerge ARGS` in its own process; stderr appended to `log`."""
    with open(log or os.devnull, "a") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "evomerge", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=ENV,
        )


# --- search ----------------------------------------------------------------------------------


def completed_trials(db: Path) -> Completed:
    """COMPLETE trials of a run's sqlite study, read directly (no Optuna, no locks held)."""
    if not db.is_file():
        return {}
    with sqlite3.connect(db, timeout=30) as con:
        try:
            rows = con.execute(
                "SELECT t.number, p.param_name, p.param_value, v.value FROM trials t "
                "JOIN trial_params p ON p.trial_id = t.trial_id "
                "JOIN trial_values v ON v.trial_id = t.trial_id WHERE t.state = 'COMPLETE'"
            ).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return {}
    params: dict[int, dict[str, float]] = {}
    values: dict[int, float] = {}
    for number, name, value, fitness in rows:
        params.setdefault(number, {})[name] = value
        values[number] = fitness
    return {n: (tuple(sorted(p.items())), values[n]) for n, p in params.items()}


def trial_states(db: Path) -> list[str]:
    with sqlite3.connect(db, timeout=30) as con:
        return [s for (s,) in con.execute("SELECT state FROM trials ORDER BY number")]


def median_candidate_seconds(db: Path) -> float:
    """Median wall time of a run's completed trials (start to completion), from its study."""
    with sqlite3.connect(db, timeout=30) as con:
        rows = con.execute(
            "SELECT (julianday(datetime_complete) - julianday(datetime_start)) * 86400.0 "
            "FROM trials WHERE state = 'COMPLETE' AND datetime_complete IS NOT NULL"
        ).fetchall()
    seconds = [s for (s,) in rows if s is not None]
    return statistics.median(seconds) if seconds else 1.0


def best(completed: Completed) -> tuple[float, int] | None:
    """Best value and its genome's hash (ties to the earliest trial, as the search does)."""
    if not completed:
        return None
    n = max(completed, key=lambda k: (completed[k][1], -k))
    digest = hashlib.sha256(repr(completed[n][0]).encode()).hexdigest()[:12]
    return completed[n][1], int(digest, 16)


@dataclass
class SearchKills:
    """What SIGKILLing one run `kills` times (resuming after each) left behind."""

    kills: int = 0
    mid_candidate: int = 0  # kills that left a RUNNING trial behind
    completed_lost: int = 0  # completed trials missing or changed after a later kill
    counted: int = 0
    budget: int = 0
    same_best: bool = False
    same_genomes: int = 0  # completed genomes in common with the uninterrupted run
    reference_best: tuple[float, int] | None = None
    killed_best: tuple[float, int] | None = None
    seconds: float = 0.0
    delays: list[float] = field(default_factory=list)


def run_search(results_dir: Path, run: str, overrides: Sequence[str]) -> int:
    args = [*overrides, f"results_dir={results_dir}", f"run={run}"]
    results_dir.mkdir(parents=True, exist_ok=True)
    return evomerge("search", *args, log=results_dir / f"{run}.log").wait()


def kill_search(
    results_dir: Path, overrides: Sequence[str], *, budget: int, kills: int, seed: int
) -> SearchKills:
    """An uninterrupted run, then the same run SIGKILLed `kills` times and resumed each time.

    Each kill comes at a random moment within two candidates' time (the uninterrupted run's
    median) of the process's first completed candidate; every fourth one instead lands
    anywhere between the process's start and its first candidate's end (start-up: imports,
    study, model, tasks; as long as it last took). So each process completes a candidate or
    two at most, whatever the machine's speed, and the budget outlasts the kills.
    """
    rng, out, start = random.Random(seed), SearchKills(budget=budget), time.monotonic()
    results_dir.mkdir(parents=True, exist_ok=True)
    args = [*overrides, f"optimizer.n_trials={budget}"]
    if run_search(results_dir, "reference", args) != 0:
        raise RuntimeError(f"the reference run failed; see {results_dir / 'reference.log'}")
    reference_db = results_dir / "reference" / "study.db"
    reference = completed_trials(reference_db)
    candidate_s = median_candidate_seconds(reference_db)
    startup_s = 4.0  # until a process has been timed to its first completed candidate
    db = results_dir / "killed" / "study.db"
    seen: Completed = {}
    while out.kills < kills:
        before = completed_trials(db)
        launched = time.monotonic()
        proc = evomerge(
            "search",
            *args,
            f"results_dir={results_dir}",
            "run=killed",
            log=results_dir / "killed.log",
        )
        if out.kills % 4 == 3:
            delay = rng.uniform(0.0, startup_s)
            time.sleep(delay)
        else:
            while proc.poll() is None and len(completed_trials(db)) <= len(before):
                time.sleep(0.01)
            startup_s = time.monotonic() - launched
            delay = rng.uniform(0.0, 2 * candidate_s)
            time.sleep(delay)
        if proc.poll() is not None:  # finished the budget before the kill: start over
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out.kills += 1
        out.delays.append(round(delay, 3))
        out.mid_candidate += "RUNNING" in trial_states(db)
        after = completed_trials(db)
        out.completed_lost += sum(after.get(n) != v for n, v in seen.items())
        seen = after
    if run_search(results_dir, "killed", args) != 0:
        raise RuntimeError("resuming the killed run failed")
    final = completed_trials(db)
    out.completed_lost += sum(final.get(n) != v for n, v in seen.items())
    out.counted = len(final)
    out.reference_best, out.killed_best = best(reference), best(final)
    out.same_best = out.reference_best == out.killed_best
    out.same_genomes = len({g for g, _ in reference.values()} & {g for g, _ in final.values()})
    out.seconds = round(time.monotonic() - start, 1)
    return out


# --- merge -----------------------------------------------------------------------------------


@dataclass
class MergeKills:
    kills: int = 0
    absent: int = 0  # killed before the rename: no output directory
    complete: int = 0  # killed after the rename: the output equals an unkilled merge
    half_written: int = 0  # an output directory that is not the full merge (must be 0)
    partial_left: int = 0  # temporary `.NAME.*.partial` directories left beside it
    seconds_per_merge: float = 0.0


def ties_recipe(root: Path, *, num_layers: int, hidden_size: int, shards: int) -> Path:
    """A TIES recipe over two generated tiny Llamas (a base and a noisy copy) under `root`."""
    from evomerge_dev.testing import make_tiny_llama

    base = make_tiny_llama(
        root / "base", seed=0, num_layers=num_layers, hidden_size=hidden_size, shards=shards
    )
    other = make_tiny_llama(root / "other", seed=1, base=base, shards=shards)
    recipe = root / "recipe.yaml"
    recipe.write_text(
        f"merge_method: ties\nbase_model: {base}\nmodels:\n"
        f"  - model: {other}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
        f"  - model: {base}\n"
    )
    return recipe


def directory_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def kill_merges(
    recipe: Path, workdir: Path, *, kills: int, seed: int, extra: Sequence[str] = ()
) -> MergeKills:
    """SIGKILL `python -m evomerge merge` at uniform random moments of its lifetime."""
    rng, out = random.Random(seed), MergeKills()
    start = time.monotonic()
    log = workdir / "merge.log"
    if evomerge(
        "merge", str(recipe), str(workdir / "reference"), "--no-progress", *extra, log=log
    ).wait():
        raise RuntimeError(f"the reference merge failed: {log.read_text()[-2000:]}")
    out.seconds_per_merge = round(time.monotonic() - start, 2)
    expected = directory_digest(workdir / "reference")
    for i in range(kills):
        target = workdir / f"out{i}"
        proc = evomerge("merge", str(recipe), str(target), "--no-progress", *extra)
        time.sleep(rng.uniform(0.0, out.seconds_per_merge))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out.kills += 1
        out.partial_left += len(list(workdir.glob(f".{target.name}.*.partial")))
        if not target.exists():
            out.absent += 1
        elif directory_digest(target) == expected:
            out.complete += 1
        else:
            out.half_written += 1
    return out


def as_dict(result: Any) -> dict[str, Any]:
    return dict(result.__dict__)
