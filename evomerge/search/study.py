"""The Optuna study is the run's checkpoint: storage, heartbeat, samplers, budget, best trial."""

from __future__ import annotations

import contextlib
import datetime
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from evomerge.errors import SearchError
from evomerge.genome import GenomeSpace
from evomerge.search.config import SearchConfig
from evomerge.search.samplers import make_sampler

FAILURE = "failure_reason"  # user attr of a candidate that failed (nan, oom, timeout, merge)


def open_study(cfg: SearchConfig, space: GenomeSpace) -> optuna.Study:
    """Create or resume the run's study; refuse to resume one from a different space."""
    engine: dict[str, Any] = {}
    if cfg.storage_url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 120}}  # several local workers may write at once
    try:
        with warnings.catch_warnings():
            # Optuna marks the heartbeat options experimental; they are its documented way to
            # fail and retry the trials of a dead worker.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                cfg.storage_url,
                engine_kwargs=engine,
                heartbeat_interval=cfg.heartbeat_s,
                grace_period=2 * cfg.heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=cfg.max_retry
                ),
            )
    except Exception as e:
        raise SearchError(f"storage: cannot open {cfg.storage_url!r}: {e}") from e
    study = optuna.create_study(
        study_name=cfg.run,
        storage=storage,
        sampler=make_sampler(cfg.optimizer, space, cfg.seed),
        direction="maximize",
        load_if_exists=True,
    )
    fingerprint = space.fingerprint()
    stored = study.user_attrs.get("space_fingerprint")
    if stored is None:
        study.set_user_attr("space_fingerprint", fingerprint)
        study.set_user_attr("space_names", list(space.names))
        if not study.trials and cfg.optimizer.sampler != "random":
            # The uniform merge is the first candidate: the baseline every later one is judged by.
            study.enqueue_trial(dict(zip(space.names, space.x0().tolist(), strict=True)))
        for point in cfg.optimizer.warm_start:
            study.enqueue_trial(point)
    elif stored != fingerprint:
        raise SearchError(
            f"run {cfg.run!r}: its study was started with a different search space "
            f"(models, method or layer groups); choose a new run=NAME or delete {cfg.run_dir}"
        )
    return study


def fail_abandoned_trials(study: optuna.Study, grace_s: float) -> int:
    """Fail RUNNING trials that a dead worker left before it recorded any parameter.

    Optuna's heartbeat covers a trial from its first heartbeat on; a worker killed between
    creating the trial and that first beat leaves a RUNNING trial that no heartbeat check
    ever fails. A live worker writes its parameters within milliseconds of creating a trial,
    so an empty one older than the grace period is abandoned. It has no genome to retry.
    """
    now = datetime.datetime.now()
    abandoned = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not t.params
        and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() > grace_s
    ]
    for t in abandoned:
        with contextlib.suppress(RuntimeError, ValueError):  # another worker got there first
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(abandoned)


def counted(trial: FrozenTrial) -> bool:
    """Trials that use up budget: completed ones, and candidates that failed on their own."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and FAILURE in trial.user_attrs
    )


def trials_done(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.FAIL)
    return sum(counted(t) for t in study.get_trials(deepcopy=False, states=states))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # ties go to the earliest trial, so the uniform merge wins unless something beats it
    return max(done, key=lambda t: (t.value, -t.number), default=None)
