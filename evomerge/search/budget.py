"""The trial budget across workers, heartbeats, and taking over a dead worker's trial.

Trial numbers are handed out by the storage in creation order, so "trials before mine" is one
total order for all workers: a trial is within budget iff budget_held(study, trial.number) <
budget. A dead worker's RUNNING trial is failed by the storage's heartbeat and its genome
enqueued again; its retry takes the lost trial's place.
"""

from __future__ import annotations

import contextlib
import datetime
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.search import optuna_adapter as adapter

FAILURE = "failure_reason"  # user attr of a candidate that failed (nan, oom, timeout, merge)
SURPLUS = "surplus"  # user attr of a trial created after the budget was held (PRUNED, unused)


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
    worker): then it no longer counts, and its retry takes the place. With `before`, WAITING
    trials (enqueued, e.g. a retry) hold their place too.
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


def surplus(trial: optuna.Trial, budget: int) -> bool:
    """Whether another worker took the last place between our budget check and this trial's
    creation; such a trial gives way before it samples anything (PRUNED, not counted)."""
    if budget_held(trial.study, before=trial.number) < budget:
        return False
    trial.set_user_attr(SURPLUS, True)
    return True


def beat_before_parameters(trial: optuna.Trial) -> None:
    """Record the trial's first heartbeat now, before its first parameter.

    Optuna's heartbeat thread writes its first beat while the objective already runs: a worker
    killed after writing a parameter but before that beat would leave a RUNNING trial that no
    heartbeat check ever fails (fail_abandoned_trials settles it after a long grace period).
    With this beat first, a trial with a parameter of its own has a heartbeat.
    """
    if adapter.heartbeat_on(trial.storage):
        adapter.record_heartbeat(trial.storage, trial)


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
    beating = adapter.trials_with_heartbeat(study, old)
    abandoned = [
        t for t in old if (not t.params if beating is None else adapter.trial_id(t) not in beating)
    ]
    for t in abandoned:
        if t.params:
            adapter.record_heartbeat(adapter.storage_of(study), t)
            continue
        with contextlib.suppress(RuntimeError, ValueError):  # another worker got there first
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(abandoned)
