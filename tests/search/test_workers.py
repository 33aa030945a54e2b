"""Many workers on one study in PostgreSQL: three processes, one SIGKILLed mid-candidate.

CI exports EVOMERGE_TEST_POSTGRES (see .ci/run). Without it, a throwaway server is started from
the installed PostgreSQL binaries; without those, the test is skipped, except under CI=true,
where it fails.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg2
import pytest
from optuna.trial import TrialState

from evomerge.search.budget import trials_done
from evomerge.search.study import sqlalchemy_url
from evomerge.search.trial_record import SURPLUS
from evomerge_dev.testing import SMALL_SEARCH
from evomerge_dev.testing_postgres import ENV_URL, create_database, server_bin_dir, throwaway_server

FAST = [
    *SMALL_SEARCH,
    "heartbeat_s=2",  # grace 4 s: a busy CI machine must not look dead
    "score_test=false",
]
BUDGET = 15


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    bin_dir = server_bin_dir()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI: set {ENV_URL} (.ci/run starts PostgreSQL and exports it)")
        pytest.skip(f"no PostgreSQL: set {ENV_URL}=postgresql://... or install postgresql")
    with throwaway_server(bin_dir) as admin:
        yield admin


def worker(tmp_path: Path, storage: str, *overrides: str) -> subprocess.Popen:
    args = [*FAST, f"results_dir={tmp_path}", "run=w", f"storage={storage}", *overrides]
    log = open(tmp_path / f"worker-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "evomerge", "search", *args],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("worker-*.log")))


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read on connections closed before this returns (also when there is
    no study yet): the tests poll every 0.1 s, and storages left to garbage collection hold
    their connections open until PostgreSQL refuses more clients."""
    rdb = optuna.storages.RDBStorage(sqlalchemy_url(storage))
    try:
        return optuna.load_study(study_name="w", storage=rdb).trials
    except KeyError:  # no study yet
        return []
    finally:
        rdb.engine.dispose()


def trial_numbered(storage: str, number: int) -> optuna.trial.FrozenTrial:
    """The trial with that number, read again until it shows: right after a SIGKILL, a read of
    the study was seen (2 runs in 24 here) to return fewer trials than the number implies."""
    end = time.monotonic() + 30
    while True:
        ts = trials(storage)
        found = [t for t in ts if t.number == number]
        if found:
            return found[0]
        if time.monotonic() > end:
            raise AssertionError(f"no trial {number} in {[t.number for t in ts]}")
        time.sleep(0.1)


def workers_done(ts: list[optuna.trial.FrozenTrial]) -> set[str]:
    return {t.user_attrs["worker"] for t in ts if t.state == TrialState.COMPLETE}


def wait_for(predicate, procs: dict[int, subprocess.Popen], tmp_path: Path) -> None:
    end = time.monotonic() + 240
    while time.monotonic() < end:
        if predicate():
            return
        if any(p.poll() not in (None, 0) for p in procs.values()):
            raise AssertionError(f"a worker failed:\n{logs(tmp_path)}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting; workers' logs:\n{logs(tmp_path)}")


def running_candidates(con) -> dict[int, int]:
    """Trial number -> worker pid of the RUNNING trials that are scoring their candidate."""
    with con.cursor() as cur:
        cur.execute(
            "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
            "ON a.trial_id = t.trial_id AND a.key = 'worker' WHERE t.state = 'RUNNING'"
        )
        return {n: int(json.loads(v).rsplit(":", 1)[1]) for n, v in cur.fetchall()}


def kill_mid_candidate(storage: str, procs: dict[int, subprocess.Popen]) -> int:
    """SIGKILL the worker of a trial that is scoring its candidate; returns the trial number."""
    con = psycopg2.connect(storage)
    con.autocommit = True
    try:
        while any(p.poll() is None for p in procs.values()):
            for number, pid in running_candidates(con).items():
                if pid not in procs:
                    continue
                procs[pid].send_signal(signal.SIGSTOP)  # frozen: still on that candidate?
                if running_candidates(con).get(number) == pid:
                    procs[pid].send_signal(signal.SIGKILL)
                    procs[pid].wait()
                    return number
                procs[pid].send_signal(signal.SIGCONT)
            time.sleep(0.02)
    finally:
        con.close()
    raise AssertionError("the workers finished before one could be killed mid-candidate")


@pytest.mark.parametrize(
    "objectives",
    [[], ["task=toy_mgsm_ja_keep", "optimizer=nsga2"]],  # CMA-ES; NSGA-II, 3 objectives
    ids=["single", "multi"],
)
def test_three_workers_one_killed_reach_the_budget_exactly(
    toy_cache, tmp_path, postgres_server, objectives
):
    storage = create_database(postgres_server)
    procs = {
        p.pid: p
        for p in (
            worker(tmp_path, storage, f"optimizer.n_trials={BUDGET}", *objectives) for _ in range(3)
        )
    }
    wait_for(lambda: len(workers_done(trials(storage))) >= 2, procs, tmp_path)
    killed = trial_numbered(storage, kill_mid_candidate(storage, procs))
    completed_before = {
        t.number: (t.params, t.values) for t in trials(storage) if t.state == TrialState.COMPLETE
    }
    survivors = [p for p in procs.values() if p.returncode is None]
    for p in survivors:
        assert p.wait(timeout=300) == 0, logs(tmp_path)

    final = trials(storage)
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    # the budget is reached exactly: counted trials = budget, no genome evaluated twice
    study = optuna.load_study(study_name="w", storage=sqlalchemy_url(storage))
    assert trials_done(study) == len(complete) == BUDGET
    genomes = [tuple(sorted(t.params.items())) for t in complete]
    twice = [t for t in complete if genomes.count(tuple(sorted(t.params.items()))) > 1]
    if objectives:
        # NSGA-II itself may propose a parent again (crossover skipped, or a parent paired
        # with itself, and no mutation); a worker's retry never repeats a scored genome
        assert not [t for t in twice if "failed_trial" in t.system_attrs], twice
    else:
        assert not twice, [(t.number, t.system_attrs, t.user_attrs.get("worker")) for t in twice]
    # no completed trial is lost or changed
    assert completed_before.items() <= {t.number: (t.params, t.values) for t in complete}.items()
    # the killed trial failed by heartbeat (no candidate failure), its genome retried once
    lost = next(t for t in final if t.number == killed.number)
    assert lost.state == TrialState.FAIL and "failure_reason" not in lost.user_attrs
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and killed.params.items() <= retried[0].params.items()
    # the only other trials are surplus ones that gave way before sampling anything, and
    # (on a machine so busy that a live worker missed its heartbeats) failed ones retried
    others = [t for t in final if t.state != TrialState.COMPLETE and t is not lost]
    surplus = [t for t in others if t.state == TrialState.PRUNED]
    assert all(t.user_attrs[SURPLUS] and not t.params for t in surplus)
    retried_numbers = {n for t in final for n in t.system_attrs.get("retry_history", ())}
    assert {t.number for t in others if t not in surplus} <= retried_numbers
    assert len(workers_done(complete)) >= 2  # (a late starter may find the work done)
    # a second command on the finished study has nothing left to do
    again = worker(tmp_path, storage, f"optimizer.n_trials={BUDGET}", *objectives)
    assert again.wait(timeout=120) == 0, logs(tmp_path)
    assert len(trials(storage)) == len(final)
