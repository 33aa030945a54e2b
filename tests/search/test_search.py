"""The search end to end on the small toy family: outputs, resume, kill -9, failures, Ctrl-C."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from evomerge.config import compose
from evomerge.errors import ConfigError, SearchError
from evomerge.evaluate import EvalSettings, evaluate, fitness, load_tasks, make_backend
from evomerge.merge import merge_to_disk
from evomerge.recipe import load_recipe
from evomerge.search.budget import fail_abandoned_trials
from evomerge.search.config import search_config
from evomerge.search.loop import run_search
from evomerge.search.space import build_space
from evomerge.search.study import open_study
from evomerge_dev.testing import SMALL_SEARCH

FAST = [
    *SMALL_SEARCH,
    "heartbeat_s=1",
]


def config(tmp_path: Path, *overrides: str):
    return search_config(compose("search", [*FAST, f"results_dir={tmp_path}", *overrides]))


def load_study(cfg) -> optuna.Study:
    return optuna.load_study(study_name=cfg.run, storage=cfg.storage_url)


def test_search_records_trials_and_exports_a_plain_recipe(toy_cache, tmp_path):
    cfg = config(tmp_path, "run=r", "optimizer.n_trials=6")
    summary = run_search(cfg, progress=False)
    study = load_study(cfg)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert summary["trials"] == len(trials) == 6
    space = build_space(cfg)
    np.testing.assert_allclose([trials[0].params[n] for n in space.names], space.x0())
    for t in trials:
        assert {"metrics", "merge_s", "swap_s", "eval_s", "generate_s", "recipe_sha256"} <= set(
            t.user_attrs
        )
        assert 0 < t.user_attrs["generate_s"] < t.user_attrs["eval_s"]
        assert t.value == t.user_attrs["metrics"]["toy_mgsm_ja_fit"]["acc"]
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert summary["best_trial"] == best.number
    assert set(summary["test_metrics"]) == {"toy_mgsm_ja"}
    # best_recipe.yaml is a plain recipe: merged on disk and scored fresh, it scores the same
    recipe = load_recipe(cfg.run_dir / "best_recipe.yaml")
    out = merge_to_disk(recipe, tmp_path / "merged")
    settings = EvalSettings(limit=40, batch_size=40)
    tasks = load_tasks(["toy_mgsm_ja_fit"], settings)
    fresh = evaluate(make_backend(out, settings), tasks).results
    assert fitness(fresh, cfg.task.objective) == best.value
    assert (cfg.run_dir / "summary.json").is_file()
    with sqlite3.connect(cfg.run_dir / "study.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(("wal", "mode"), [(True, "wal"), (False, "delete")])
def test_the_sqlite_journal_follows_sqlite_wal(toy_cache, tmp_path, wal, mode):
    cfg = config(tmp_path, "run=j", f"sqlite_wal={str(wal).lower()}")
    cfg.run_dir.mkdir(parents=True)
    open_study(cfg, build_space(cfg))
    with sqlite3.connect(cfg.run_dir / "study.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == mode


def test_a_study_whose_creator_died_before_seeding_it_is_seeded_once(
    toy_cache, tmp_path, monkeypatch
):
    """A process killed between creating the study and enqueueing the uniform merge: the next
    process to open it enqueues it; opening again adds nothing."""
    import evomerge.search.study as study_module

    monkeypatch.setattr(study_module, "SEED_WAIT_S", 0.2)
    cfg = config(tmp_path, "run=s")
    cfg.run_dir.mkdir(parents=True)
    space = build_space(cfg)
    optuna.create_study(study_name="s", storage=cfg.storage_url, direction="maximize")
    x0 = dict(zip(space.names, space.x0().tolist(), strict=True))
    for _ in range(2):
        study = open_study(cfg, space)
        enqueued = [(t.state, t.system_attrs["fixed_params"]) for t in study.trials]
        assert enqueued == [(TrialState.WAITING, x0)]
    assert study.user_attrs["seeded"] is True


def test_an_unseeded_study_with_trials_is_left_as_it_is(toy_cache, tmp_path, monkeypatch):
    """Studies from before the seeded mark, or whose search is under way without the uniform
    merge: nothing is enqueued into them."""
    import evomerge.search.study as study_module

    monkeypatch.setattr(study_module, "SEED_WAIT_S", 0.2)
    cfg = config(tmp_path, "run=s")
    cfg.run_dir.mkdir(parents=True)
    space = build_space(cfg)
    old = optuna.create_study(study_name="s", storage=cfg.storage_url, direction="maximize")
    old.enqueue_trial(dict.fromkeys(space.names, 0.25))
    study = open_study(cfg, space)
    enqueued = [t.system_attrs["fixed_params"] for t in study.trials]
    assert enqueued == [dict.fromkeys(space.names, 0.25)]


def test_rerunning_the_command_resumes_without_repeating(toy_cache, tmp_path):
    first = config(tmp_path, "run=r", "optimizer.n_trials=4")
    run_search(first, progress=False)
    before = [(t.number, t.params, t.value) for t in load_study(first).trials]
    run_search(config(tmp_path, "run=r", "optimizer.n_trials=8"), progress=False)
    after = load_study(first).trials
    assert [(t.number, t.params, t.value) for t in after[:4]] == before
    assert len(after) == 8 and all(t.state == TrialState.COMPLETE for t in after)
    assert len({tuple(t.params.values()) for t in after}) == 8


def test_a_different_space_cannot_resume_the_run(toy_cache, tmp_path):
    run_search(config(tmp_path, "run=r", "optimizer.n_trials=1"), progress=False)
    with pytest.raises(SearchError, match="different search space"):
        run_search(config(tmp_path, "run=r", "space.layers_per_group=2"), progress=False)


def test_failed_candidates_are_recorded_and_the_search_goes_on(toy_cache, tmp_path):
    cfg = config(tmp_path, "run=r", "optimizer.n_trials=3", "evaluator.timeout_s=0.000001")
    summary = run_search(cfg, progress=False)
    trials = load_study(cfg).trials
    assert len(trials) == 3 and summary["trials"] == 3
    assert all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["failure_reason"].startswith("timeout") for t in trials)
    assert "best_trial" not in summary


def search_process(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    args = [*FAST, f"results_dir={tmp_path}", "run=r", *overrides]
    return subprocess.Popen(
        [sys.executable, "-m", "evomerge", "search", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def states(db: Path) -> list[str]:
    if not db.is_file():
        return []
    with sqlite3.connect(db) as con:
        try:
            return [s for (s,) in con.execute("select state from trials order by number")]
        except sqlite3.OperationalError:  # tables not created yet
            return []


def running_with_params(db: Path) -> bool:
    with sqlite3.connect(db, timeout=0.1) as con:
        try:
            row = con.execute(
                "select t.state, count(p.param_id) from trials t left join trial_params p "
                "on p.trial_id = t.trial_id group by t.trial_id order by t.number desc limit 1"
            ).fetchone()
        except sqlite3.OperationalError:  # frozen while holding the write lock
            return False
    return row is not None and row[0] == "RUNNING" and row[1] > 0


def wait_for(predicate, timeout=120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


# one objective (CMA-ES), and three objectives with constraints (NSGA-II)
OBJECTIVES = [[], ["task=toy_mgsm_ja_keep", "optimizer=nsga2"]]


@pytest.mark.parametrize("objectives", OBJECTIVES, ids=["single", "multi"])
def test_kill_9_loses_no_completed_trial_and_retries_the_running_one(
    toy_cache, tmp_path, objectives
):
    cfg = config(tmp_path, "run=r", "optimizer.n_trials=10", *objectives)
    db = cfg.run_dir / "study.db"
    proc = search_process(tmp_path, "optimizer.n_trials=10", *objectives)
    wait_for(lambda: states(db).count("COMPLETE") >= 3)
    while True:  # freeze the worker in the middle of a candidate, then kill it
        proc.send_signal(signal.SIGSTOP)
        if running_with_params(db):
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    completed = [
        (t.number, t.params, t.values)
        for t in load_study(cfg).trials
        if t.state == TrialState.COMPLETE
    ]
    killed = next(t for t in load_study(cfg).trials if t.state == TrialState.RUNNING)
    time.sleep(2.5)  # past the heartbeat's grace period (2 x heartbeat_s)
    run_search(cfg, progress=False)
    trials = load_study(cfg).trials
    assert [
        (t.number, t.params, t.values)
        for t in trials
        if t.number < killed.number and t.state == TrialState.COMPLETE
    ] == completed
    assert trials[killed.number].state == TrialState.FAIL
    # the killed genome (the coordinates it had recorded when it died) is tried again
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert killed.params.items() <= retried[0].params.items()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 10


def test_ctrl_c_stops_cleanly_after_the_current_candidate(toy_cache, tmp_path):
    cfg = config(tmp_path, "run=r", "optimizer.n_trials=200")
    db = cfg.run_dir / "study.db"
    proc = search_process(tmp_path, "optimizer.n_trials=200")
    wait_for(lambda: states(db).count("COMPLETE") >= 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopping after the current candidate" in err
    final = states(db)
    assert "RUNNING" not in final and "FAIL" not in final
    assert 2 <= final.count("COMPLETE") < 200
    assert (cfg.run_dir / "best_recipe.yaml").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["run=../x"], "run: must be a plain directory name"),
        (["+optimizer.popsize=3"], r"optimizer: unknown key\(s\) \['popsize'\]"),
        (["optimizer.n_trials=0"], "optimizer.n_trials: must be >= 1"),
        (["optimizer=nope"], "Could not find 'optimizer/nope'"),
        (["space.method=slerp"], "space.method: 'slerp' is not searchable"),
        (["merge_device=gpu"], "merge_device: must be null, cpu, cuda or cuda:N, got 'gpu'"),
        (["merge_device=cuda:x"], "merge_device: must be null, cpu, cuda or cuda:N, got 'cuda:x'"),
    ],
)
def test_bad_configuration_is_reported_with_its_key(toy_cache, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg = config(tmp_path, *overrides)
        build_space(cfg)


@pytest.mark.parametrize(
    ("overrides", "device"),
    [
        ([], "cpu"),
        (["evaluator.device=cuda"], "cuda"),  # HF: merged where the live model is
        (["evaluator=vllm"], "cpu"),  # vLLM: the engine holds its share of the GPU
        (["evaluator=vllm", "merge_device=cuda:1"], "cuda:1"),
    ],
)
def test_candidates_are_merged_on_merge_device_or_the_backends_default(tmp_path, overrides, device):
    assert config(tmp_path, *overrides).merge_on == device


def test_trials_abandoned_before_their_first_parameter_are_failed(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    study.ask()  # a worker that died right after creating its trial
    done = study.ask()
    done.suggest_float("x", 0, 1)  # a live worker's trial has parameters
    time.sleep(0.01)
    assert fail_abandoned_trials(study, grace_s=0.0) == 1
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert fail_abandoned_trials(study, grace_s=3600.0) == 0


def heartbeat_storage(tmp_path):
    """The search's storage in small: heartbeat every second, stale after one, lost retried."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    return RDBStorage(
        f"sqlite:///{tmp_path / 's.db'}",
        heartbeat_interval=1,
        grace_period=1,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
    )


# Optuna marks its heartbeat API experimental, and warns when a trial is asked for outside
# Study.optimize, which is how these tests stand in for a worker killed at a given moment.
HEARTBEAT_WARNINGS = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning",
    "ignore:Heartbeat of storage is supposed to be used with Study.optimize:UserWarning",
)


class Killed(BaseException):
    """The worker's process ending where it stands."""


@HEARTBEAT_WARNINGS
def test_a_worker_killed_right_after_its_first_parameter_leaves_a_trial_that_is_retried(
    tmp_path, monkeypatch
):
    """Optuna's heartbeat thread writes its first beat concurrently with the candidate: the
    trial's first beat must be on record before its first parameter is."""
    import contextlib

    import evomerge.search.optuna_adapter as adapter
    from evomerge.search.source import SourceSpec, StopFlag, TrialSource

    study = optuna.create_study(storage=heartbeat_storage(tmp_path))
    names = ("layers.0.a.weight", "layers.0.b.weight")
    spec = SourceSpec(budget=10, heartbeat_s=1, generation_size=4)
    source = TrialSource(study, names, spec, StopFlag(), "w", lambda x0: study.sampler)
    # the worker dies before its heartbeat thread would first beat
    monkeypatch.setattr(adapter, "heartbeat_thread", lambda trial: contextlib.nullcontext())
    trial = source.ask()
    assert trial is not None
    source.genome(trial)  # its parameters; then the worker is killed (nothing is told)
    assert set(study.trials[0].params) == set(names)
    time.sleep(2.5)  # past the grace period (the storage keeps whole seconds)
    optuna.storages.fail_stale_trials(study)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == first.params  # retried


@HEARTBEAT_WARNINGS
def test_a_retry_taken_by_a_worker_killed_before_its_first_heartbeat_is_retried(tmp_path):
    """A retry holds its lost trial's parameters from the start: a worker killed right after
    taking it (before any heartbeat) leaves a RUNNING trial with parameters and no beat."""
    study = optuna.create_study(storage=heartbeat_storage(tmp_path))
    genome = {"x": 0.25, "y": 0.75}
    study.add_trial(  # what RetryHeartbeatStaleTrialCallback enqueues for a lost trial
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=genome,
            distributions=dict.fromkeys(genome, optuna.distributions.FloatDistribution(0, 1)),
            system_attrs={"failed_trial": 7, "retry_history": [7]},
        )
    )
    study.ask()  # taken, then the worker is killed: no heartbeat, no further write
    time.sleep(0.01)
    assert fail_abandoned_trials(study, grace_s=3600.0) == 0  # too young to tell
    assert fail_abandoned_trials(study, grace_s=0.0) == 1
    time.sleep(2.5)  # past the heartbeat's grace period (the storage keeps whole seconds)
    optuna.storages.fail_stale_trials(study)
    taken, retry = study.trials
    assert taken.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.params == genome and retry.system_attrs["retry_history"] == [7, 0]


def test_candidate_seconds_leave_out_trials_abandoned_by_a_killed_worker():
    from datetime import datetime, timedelta

    from evomerge.search.report import candidate_seconds
    from evomerge.search.trial_record import FAILURE

    t0 = datetime(2026, 1, 1)
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}

    def trial(state, attrs=None, value=None):
        return optuna.trial.create_trial(
            state=state, value=value, params={"x": 0.5}, distributions=dist, user_attrs=attrs or {}
        )

    scored = trial(TrialState.COMPLETE, value=0.3)
    failed = trial(TrialState.FAIL, attrs={FAILURE: "nan: model.norm.weight"})
    abandoned = trial(TrialState.FAIL)  # failed by the heartbeat an hour after its start
    for t, seconds in ((scored, 2), (failed, 3), (abandoned, 3600)):
        t.datetime_start, t.datetime_complete = t0, t0 + timedelta(seconds=seconds)
    assert candidate_seconds([scored, failed, abandoned]) == 5.0
