"""The trial budget across workers, heartbeats, and taking over a dead worker's trial.

Trial numbers are handed out by the storage in creation order, so "trials before mine" is one
total order for all workers: a trial is within budget iff budget_held(study, trial.number) <
budget. A dead worker's RUNNING trial is failed by the storage's heartbeat and its genome
enqueued again; its retry takes the lost trial's place.

The loop keeps these counts in a `Ledger`, refreshed from the trials that are new or were
unfinished at its last read: a candidate's bookkeeping then costs the same at the 3,000th
trial as at the 10th (the study-wide reads below stay as the reference the tests compare with).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import statistics
import time
from collections import deque
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.search import optuna_adapter as adapter
from evomerge.search.pareto import chosen, feasible
from evomerge.search.trial_record import TrialRecord, write_surplus


def counted(trial: FrozenTrial) -> bool:
    """Trials that use up budget: completed ones, and candidates that failed on their own."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and TrialRecord.of(trial).failed
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


def budget_held_elsewhere(
    study: optuna.Study, ledger: Ledger, budget: int, heartbeat_s: int
) -> bool:
    """Before a new candidate: True (after a short wait) while running trials hold the rest of
    the budget, so this worker starts none; their workers finish them, or, when one is dead,
    its heartbeat expires, the trial fails and its genome is retried by whoever asks next.
    Refreshes the ledger (other workers' trials)."""
    # The heartbeat starts right after a trial is created; only a worker killed in between
    # leaves a trial it never covers. A long grace keeps this from failing a live worker that
    # is slow to its first parameter (a busy machine, a slow sampler).
    running = ledger.refresh().running()
    if fail_abandoned_trials(study, grace_s=max(10 * heartbeat_s, 60), running=running):
        ledger.refresh()
    if ledger.held() < budget:
        return False
    optuna.storages.fail_stale_trials(study)
    time.sleep(min(heartbeat_s, 2))
    return True


def surplus(trial: optuna.Trial, ledger: Ledger, budget: int) -> bool:
    """Whether another worker took the last place between our budget check and this trial's
    creation; such a trial gives way before it samples anything (PRUNED, not counted)."""
    if ledger.refresh().held(before=trial.number) < budget:
        return False
    write_surplus(trial)
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


def fail_abandoned_trials(
    study: optuna.Study, grace_s: float, running: Sequence[FrozenTrial] | None = None
) -> int:
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
    `running`: the RUNNING trials, where the caller has them (a Ledger).
    """
    now = datetime.datetime.now()
    if running is None:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    old = [
        t
        for t in running
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


class Ledger:
    """The study's counts, updated from the trials new since the last refresh (a finished
    trial never changes, so it is added once): budget used and held, the best trial (as
    study.best_trial), the latest values (racing's median), the items and tokens generated."""

    def __init__(self, study: optuna.Study, window: int = 10) -> None:
        self.study = study
        self._last_id = -1  # the largest trial id read so far
        self._open: dict[int, FrozenTrial] = {}  # trial id -> latest copy, not yet finished
        self._counted: list[int] = []  # sorted numbers of finished trials that use budget
        self._best: dict[bool, FrozenTrial] = {}  # feasible? -> best (one objective)
        self._complete: list[FrozenTrial] = []  # several objectives: the front needs them all
        self.last_complete: FrozenTrial | None = None
        self.recent: deque[float] = deque(maxlen=window)  # latest completed primary values
        self.failed = 0
        self.items = 0  # documents generated by finished trials
        self.tokens = 0
        self.candidate_seconds = 0.0

    def refresh(self) -> Ledger:
        for t in adapter.trials_since(self.study, self._last_id, set(self._open)):
            self._last_id = max(self._last_id, adapter.trial_id(t))
            if t.state.is_finished():
                self._open.pop(adapter.trial_id(t), None)
                self._add(t)
            else:
                self._open[adapter.trial_id(t)] = t
        return self

    def _add(self, t: FrozenTrial) -> None:
        if counted(t):
            bisect.insort(self._counted, t.number)
        rec = TrialRecord.of(t)
        self.failed += rec.failed
        self.items += rec.items or 0
        self.tokens += rec.tokens
        self.candidate_seconds += trial_seconds(t)
        if t.state != TrialState.COMPLETE or not t.values:
            return
        self.recent.append(t.values[0])
        if self.last_complete is None or t.number > self.last_complete.number:
            self.last_complete = t
        if len(self.study.directions) > 1:
            self._complete.append(t)
            return
        sign = 1.0 if self.study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        ok = feasible(t)
        held = self._best.get(ok)  # ties go to the earliest trial (the uniform merge first)
        if held is None or (sign * t.values[0], -t.number) > (sign * held.values[0], -held.number):
            self._best[ok] = t

    @property
    def best(self) -> FrozenTrial | None:
        """The run's answer, as study.best_trial (pareto.chosen) gives it."""
        if len(self.study.directions) > 1:
            return chosen(self._complete, self.study.directions)
        return self._best.get(True) or self._best.get(False)

    @property
    def done(self) -> int:
        """Trials that used budget (as trials_done)."""
        return len(self._counted)

    def running(self) -> list[FrozenTrial]:
        return [t for t in self._open.values() if t.state == TrialState.RUNNING]

    def held(self, before: int | None = None) -> int:
        """Budget used or in use (as budget_held)."""
        if before is None:
            return self.done + len(self.running())
        live = sum(
            t.number < before and t.state in (TrialState.RUNNING, TrialState.WAITING)
            for t in self._open.values()
        )
        return bisect.bisect_left(self._counted, before) + live

    def median(self) -> float | None:
        """The median of the latest `window` completed values (a generation's); None before
        there are that many."""
        if len(self.recent) < (self.recent.maxlen or 0):
            return None
        return statistics.median(self.recent)


def trial_seconds(t: FrozenTrial) -> float:
    """A scored or failed candidate's seconds (as report.candidate_seconds); 0 for others."""
    if t.datetime_complete is None or t.datetime_start is None:
        return 0.0
    if t.state != TrialState.COMPLETE and not TrialRecord.of(t).failed:
        return 0.0
    return (t.datetime_complete - t.datetime_start).total_seconds()
