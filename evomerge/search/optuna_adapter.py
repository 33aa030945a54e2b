"""The one place that reaches past Optuna's public API (pinned by tests/search/test_optuna_adapter.py).

What the search needs and Optuna does not expose: a trial's storage id (to write a heartbeat
for it), the heartbeat thread `study.optimize` runs around a trial (the search asks and tells
its trials itself), the generation a sampler asked a trial in, the study's storage, which trials have a
heartbeat on record (Optuna keeps them in its `trial_heartbeats` table and has no call to read
them), and whether an error means "this trial was already finished by someone else". Everything else goes through Optuna's
public API, in the modules that use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial

# The text of Optuna's error for telling a trial that a heartbeat check already failed.
_TELL_FAILED = "Cannot tell a FAIL trial"


def heartbeat_storage(
    url: str, engine: dict[str, Any], *, heartbeat_s: int, max_retry: int
) -> RDBStorage:
    """Optuna's relational storage with a heartbeat: a trial silent for two beats is failed
    and its parameters retried (`max_retry` times)."""
    with warnings.catch_warnings():
        # Optuna marks the heartbeat options experimental; they are its documented way to
        # fail and retry the trials of a dead worker.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial (the sampler's next), outside `study.optimize`: the search's trial source
    runs the heartbeat itself (`heartbeat_thread`), so Optuna's warning about that is off."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
        return study.ask()


def fail_stale_trials(study: optuna.Study) -> None:
    """What `study.optimize` does before each trial where the storage keeps heartbeats: fail
    the trials of dead workers (and enqueue their retries)."""
    if heartbeat_on(storage_of(study)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


def heartbeat_thread(trial: optuna.Trial) -> Any:
    """The heartbeat `study.optimize` runs around each trial (a thread that beats every
    heartbeat interval while the block runs; nothing where the storage keeps none)."""
    return get_heartbeat_thread(trial_id(trial), storage_of(trial.study))


def close_storage(study: optuna.Study) -> None:
    """Close the study's database connections now rather than at garbage collection: the last
    connection to an SQLite study file in WAL mode folds the log back into the file and
    removes it, so a finished run directory holds one complete `study.db`."""
    engine = getattr(getattr(storage_of(study), "_backend", storage_of(study)), "engine", None)
    if engine is not None:
        engine.dispose()


def study_user_attrs(url: str, study_name: str) -> dict[str, Any]:
    """The user attributes of a stored study ({} if there is none), read on connections that
    are closed before this returns (a reader left open would change the study file later)."""
    storage = RDBStorage(url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
        return storage.get_study_user_attrs(study_id)
    except KeyError:
        return {}
    finally:
        storage.engine.dispose()


def storage_of(study: optuna.Study) -> Any:
    """The study's storage (an RDBStorage, or Optuna's cache around one)."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


def generation_of(trial: optuna.Trial, window: int) -> int:
    """The generation the sampler asked `trial` in. Optuna's CMA-ES and NSGA-II write it as a
    system attribute of the trial when they sample it (`cma:generation`,
    `NSGAIISampler:generation`; a live trial has no public call to read it); samplers without
    generations (TPE, random, the first independent trial of CMA-ES) count blocks of `window`
    trials by number, as does the pycma replay, whose generations follow trial order."""
    attrs = storage_of(trial.study).get_trial_system_attrs(trial_id(trial))
    found = [v for k, v in sorted(attrs.items()) if k.endswith(":generation")]
    return int(found[-1]) if found else trial.number // max(window, 1)


def heartbeat_on(storage: Any) -> bool:
    """Whether a storage keeps heartbeats (the search's always does)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)() is not None


def record_heartbeat(storage: Any, trial: optuna.Trial | FrozenTrial) -> None:
    """Write a heartbeat for the trial now (Optuna's own thread beats only while it runs)."""
    storage.record_heartbeat(trial_id(trial))


def trials_with_heartbeat(study: optuna.Study, trials: Sequence[FrozenTrial]) -> set[int] | None:
    """Ids of those trials that have a heartbeat on record, read from the study's database;
    None where heartbeats are off or the storage is no database Optuna's way."""
    storage = storage_of(study)
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
            rows = con.execute(query, {"ids": [trial_id(t) for t in trials]})
            return {int(found) for (found,) in rows}
    except sqlalchemy.exc.SQLAlchemyError:
        return None


def trials_since(study: optuna.Study, last_id: int, open_ids: set[int]) -> list[FrozenTrial]:
    """The trials with an id above `last_id`, and those of `open_ids`, by id: one query on
    Optuna's relational storage (its `_get_trials`, which its cache uses the same way); on
    another storage, filtered from all trials."""
    storage = storage_of(study)
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, RDBStorage):
        return list(backend._get_trials(study._study_id, None, set(open_ids), last_id))
    trials = study.get_trials(deepcopy=False)
    return [t for t in trials if trial_id(t) > last_id or trial_id(t) in open_ids]


def retried_numbers(trial: FrozenTrial) -> list[int]:
    """Numbers of the lost trials that this trial retries (the heartbeat's retry history).

    What RetryHeartbeatStaleTrialCallback.retry_history returns, read directly: that call
    warns as experimental, and the pycma sampler reads it for every trial at every ask."""
    return list(trial.system_attrs.get("retry_history", ()))


def finished_elsewhere(e: Exception) -> bool:
    """Optuna's error for writing to (or telling) a trial that is already finished."""
    return isinstance(e, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(e, ValueError) and str(e).startswith(_TELL_FAILED)
    )
