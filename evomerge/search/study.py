"""The Optuna study is the run's checkpoint: storage, heartbeat, samplers, budget, best trial."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import sqlite3
import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from evomerge.errors import SearchError
from evomerge.genome import GenomeSpace
from evomerge.search.config import SearchConfig
from evomerge.search.objectives import check_directions, study_directions
from evomerge.search.pareto import chosen
from evomerge.search.samplers import make_sampler

FAILURE = "failure_reason"  # user attr of a candidate that failed (nan, oom, timeout, merge)
OPEN_ATTEMPTS = 5  # tries to open the storage (see open_study)
SURPLUS = "surplus"  # user attr of a trial created after the budget was held (PRUNED, unused)
SEEDED = "seeded"  # study user attr: its first candidates (x0, warm starts) are enqueued
SEED_WAIT_S = 10.0  # how long a process opening an unseeded study gives its creator


def open_study(cfg: SearchConfig, space: GenomeSpace) -> optuna.Study:
    """Create or resume the run's study; refuse to resume one from a different space."""
    engine: dict[str, Any] = {}
    if cfg.storage_url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 120}}  # several local workers may write at once
        if cfg.sqlite_wal:
            use_sqlite_wal(cfg.storage_url)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            storage = rdb_storage(cfg, engine)
            break
        except Exception as e:
            # Workers started together on an empty PostgreSQL database race to create Optuna's
            # tables: the losers fail once with a duplicate-type error; the tables exist then.
            if attempt == OPEN_ATTEMPTS:
                raise SearchError(f"storage: cannot open {cfg.storage_url!r}: {e}") from e
            time.sleep(0.2 * attempt)
    sampler = make_sampler(cfg.optimizer, space, cfg.seed)
    try:
        # Workers started together race to create the study; the storage lets exactly one
        # win, and only that one enqueues the first candidates (else each would, once).
        study = optuna.create_study(
            study_name=cfg.run,
            storage=storage,
            sampler=sampler,
            directions=study_directions(cfg.task.goals),
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=cfg.run, storage=storage, sampler=sampler)
        created = False
    fingerprint = space.fingerprint()
    stored = study.user_attrs.get("space_fingerprint")
    if stored is None:
        study.set_user_attr("space_fingerprint", fingerprint)
        study.set_user_attr("space_names", list(space.names))
    elif stored != fingerprint:
        raise SearchError(
            f"run {cfg.run!r}: its study was started with a different search space "
            f"(models, method or layer groups); choose a new run=NAME or delete {cfg.run_dir}"
        )
    check_directions(study, cfg.task.goals, cfg.run)
    if created:
        seed_first_candidates(study, cfg, space)
    elif not seeded(study):
        # Its creator may have been killed between creating the study and seeding it. A live
        # creator seeds within milliseconds; one that has not in SEED_WAIT_S is dead.
        deadline = time.monotonic() + SEED_WAIT_S
        while not seeded(study) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not seeded(study):
            seed_first_candidates(study, cfg, space)
    return study


def seeded(study: optuna.Study) -> bool:
    """Whether the study's creator has seeded it, or begun to (its first enqueued trial), or
    it is under way (a study from before the seeded mark)."""
    return study.user_attrs.get(SEEDED) is not None or bool(study.get_trials(deepcopy=False))


def seed_first_candidates(study: optuna.Study, cfg: SearchConfig, space: GenomeSpace) -> None:
    """Enqueue the uniform merge (the first candidate: the baseline every later one is judged
    by; not for random search) and the warm starts, then mark the study seeded. Points already
    in the study are skipped, so a second seeding adds nothing."""
    points = []
    if cfg.optimizer.sampler != "random":
        points.append(dict(zip(space.names, space.x0().tolist(), strict=True)))
    points.extend(cfg.optimizer.warm_start)
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)
    study.set_user_attr(SEEDED, True)


def use_sqlite_wal(url: str) -> None:
    """Put an SQLite study file in write-ahead-log mode (the mode is stored in the file).

    Optuna commits every parameter and attribute on its own: with the default rollback journal
    each commit syncs the database and its journal (7 ms here), in WAL mode only the log (1.3
    ms). Commits stay synced (synchronous=FULL), so a crash loses no finished trial. WAL needs
    the workers on one host and a local filesystem.
    """
    path = url.removeprefix("sqlite:///")
    if path == url or not path or path == ":memory:":
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=120)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise SearchError(f"storage: cannot open {path}: {e}") from e


def rdb_storage(cfg: SearchConfig, engine: dict[str, Any]) -> RDBStorage:
    with warnings.catch_warnings():
        # Optuna marks the heartbeat options experimental; they are its documented way to
        # fail and retry the trials of a dead worker.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            sqlalchemy_url(cfg.storage_url),
            engine_kwargs=engine,
            heartbeat_interval=cfg.heartbeat_s,
            grace_period=2 * cfg.heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry=cfg.max_retry
            ),
        )


def sqlalchemy_url(url: str) -> str:
    """`postgresql://` with the driver that is installed.

    SQLAlchemy 2.1 reads a plain `postgresql://` as psycopg 3; the `distributed` extra installs
    psycopg2 (binary wheels everywhere), so a plain URL names it unless psycopg 3 is present.
    """
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def budget_held_elsewhere(study: optuna.Study, budget: int, heartbeat_s: int) -> bool:
    """Before a new candidate: True (after a short wait) while running trials hold the rest of
    the budget, so this worker starts none; their workers finish them, or, when one is dead,
    its heartbeat expires, the trial fails and its genome is retried by whoever asks next."""
    # The heartbeat starts right after a trial is created; only a worker killed in between
    # leaves a trial it never covers. A long grace keeps this from failing a live worker that
    # is slow to its first parameter (a busy machine, a slow sampler).
    fail_abandoned_trials(study, grace_s=max(10 * heartbeat_s, 60))
    if budget_held(study) < budget:
        return False
    optuna.storages.fail_stale_trials(study)
    time.sleep(min(heartbeat_s, 2))
    return True


def beat_before_parameters(trial: optuna.Trial) -> None:
    """Record the trial's first heartbeat now, before its first parameter.

    Optuna's heartbeat thread writes its first beat while the objective already runs: a worker
    killed after writing a parameter but before that beat would leave a RUNNING trial that no
    heartbeat check ever fails (fail_abandoned_trials settles it after a long grace period).
    With this beat first, a trial with a parameter of its own has a heartbeat.
    """
    storage: Any = trial.storage  # an RDBStorage, or Optuna's cache around one
    if heartbeat_on(storage):
        storage.record_heartbeat(trial._trial_id)


def heartbeat_on(storage: Any) -> bool:
    """Whether the study's storage keeps heartbeats (the search's always does)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)() is not None


def fail_abandoned_trials(study: optuna.Study, grace_s: float) -> int:
    """Settle RUNNING trials that a dead worker left before their first heartbeat; returns
    how many.

    Optuna's heartbeat covers a trial from its first beat on; a worker killed between taking a
    trial (a new one, or a retry enqueued with its lost trial's parameters) and that beat
    leaves a RUNNING trial that no heartbeat check ever fails. A live worker beats within
    milliseconds of taking a trial, so one without a beat after the grace period is abandoned.
    Without parameters it is failed (no genome to retry). With parameters (a retry) it is
    given the heartbeat its worker never wrote: that beat goes stale, and the heartbeat check
    fails the trial and retries its genome, as for any lost trial. Where the storage cannot
    tell which trials have a heartbeat, a trial counts as abandoned when it has no parameter.
    """
    now = datetime.datetime.now()
    old = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace_s
    ]
    if not old:
        return 0
    beating = trials_with_heartbeat(study, old)
    abandoned = [
        t for t in old if (not t.params if beating is None else t._trial_id not in beating)
    ]
    storage: Any = study._storage
    for t in abandoned:
        if t.params:
            storage.record_heartbeat(t._trial_id)
            continue
        with contextlib.suppress(RuntimeError, ValueError):  # another worker got there first
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(abandoned)


def trials_with_heartbeat(study: optuna.Study, trials: Sequence[FrozenTrial]) -> set[int] | None:
    """Ids of those trials that have a heartbeat on record, read from the study's database
    (Optuna has no call for it); None where heartbeats are off or the storage is no database
    Optuna's way."""
    storage: Any = study._storage
    if not heartbeat_on(storage):
        return None
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is None:
        return None
    query = sqlalchemy.text(
        "SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids"
    ).bindparams(sqlalchemy.bindparam("ids", expanding=True))
    try:
        with engine.connect() as con:
            rows = con.execute(query, {"ids": [t._trial_id for t in trials]})
            return {int(trial_id) for (trial_id,) in rows}
    except sqlalchemy.exc.SQLAlchemyError:
        return None


def counted(trial: FrozenTrial) -> bool:
    """Trials that use up budget: completed ones, and candidates that failed on their own."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and FAILURE in trial.user_attrs
    )


def trials_done(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.FAIL)
    return sum(counted(t) for t in study.get_trials(deepcopy=False, states=states))


def budget_held(study: optuna.Study, before: int | None = None) -> int:
    """Budget used or in use: counted trials plus RUNNING ones (of `before` lower numbers).

    A RUNNING trial holds its place until it finishes, or until the heartbeat fails it (a dead
    worker): then it no longer counts, and its retry takes the place. Trial numbers are
    handed out by the storage in creation order, so "trials before mine" is one total order
    for all workers: a trial is within budget iff budget_held(study, trial.number) < budget.
    With `before`, WAITING trials (enqueued, e.g. a retry) hold their place too.
    """
    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    held = 0
    for t in study.get_trials(deepcopy=False, states=states):
        if before is not None and t.number >= before:
            continue
        live = t.state == TrialState.RUNNING or (
            before is not None and t.state == TrialState.WAITING
        )
        held += live or counted(t)
    return held


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The run's answer: the best primary objective among the trials that satisfy every
    constraint (with one objective and no constraints: the best fitness); ties go to the
    earliest trial, so the uniform merge wins unless something beats it."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return chosen(done, study.directions)
