"""The trial source: the run's study behind an explicit ask and tell, in the style of the
`cmaes` library (`ask() -> trial`, `tell(trial, values)`).

It owns what one worker among several needs on a shared study, so that the loop does not:
the trial budget (a `Ledger`, and the trials that wait while running ones hold the rest of
it), heartbeats (a dead worker's trial fails and its genome is retried; see budget.py), the
grid warm start (warmstart.py swaps the sampler once the grid is scored), and surplus trials
(created after another worker took the last place: PRUNED before they sample anything).
Optuna's private reaches stay in optuna_adapter.py.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.trial import TrialState
from tqdm import tqdm

from evomerge.errors import EvomergeError
from evomerge.search import optuna_adapter as adapter
from evomerge.search.budget import (
    Ledger,
    beat_before_parameters,
    budget_held_elsewhere,
    surplus,
)
from evomerge.search.trial_record import write_failure
from evomerge.search.warmstart import GridStart


@dataclass(frozen=True)
class SourceSpec:
    """What the source needs of the run's config."""

    budget: int  # optimizer.n_trials: trials that use budget, across every worker
    heartbeat_s: int
    generation_size: int  # the Ledger's window (a generation's median, for racing)


class CandidateError(EvomergeError):
    """A candidate that failed on its own (a genome that is no model, a merge or evaluation
    that failed): its trial is FAIL with the reason, and the search goes on."""

    def __init__(self, reason: str, error: Exception) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason


@dataclass
class StopFlag:
    """First Ctrl-C: finish the current candidate, then stop. Second: stop now."""

    requested: bool = False

    @contextlib.contextmanager
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


class TrialSource:
    """Trials of one worker, asked and told explicitly; `for trial in source` asks until the
    budget is used or the stop flag is raised (Ctrl-C)."""

    def __init__(
        self,
        study: optuna.Study,
        names: tuple[str, ...],
        spec: SourceSpec,
        stop: StopFlag,
        worker: str,
        sampler_from: Callable[[np.ndarray], BaseSampler],
    ) -> None:
        self.study = study
        self.names = names
        self.spec = spec
        self.stop = stop
        self.worker = worker
        self.ledger = Ledger(study, window=spec.generation_size)
        self.ledger.refresh()
        self.grid = GridStart(names, sampler_from)
        self._beat: contextlib.ExitStack | None = None

    def __iter__(self) -> Iterator[optuna.Trial]:
        while (trial := self.ask()) is not None:
            yield trial

    def ask(self) -> optuna.Trial | None:
        """The next trial, its heartbeat running; None once the budget is used (or stopped)."""
        study, ledger, spec = self.study, self.ledger, self.spec
        while ledger.done < spec.budget and not self.stop.requested:
            if budget_held_elsewhere(study, ledger, spec.budget, spec.heartbeat_s):
                continue  # running trials hold the rest of the budget
            if not self.grid.before_candidate(study):
                continue  # grid points are being scored elsewhere
            adapter.fail_stale_trials(study)  # as Optuna's optimize() does before each trial
            trial = adapter.ask(study)
            if surplus(trial, ledger, spec.budget):  # another worker took the last place
                study.tell(trial, state=TrialState.PRUNED)
                continue
            beat_before_parameters(trial)
            self._beat = contextlib.ExitStack()
            self._beat.enter_context(adapter.heartbeat_thread(trial))
            return trial
        return None

    def genome(self, trial: optuna.Trial) -> np.ndarray:
        """The sampler's genome for `trial` (the box [0, 1] per coordinate)."""
        return np.array([trial.suggest_float(name, 0.0, 1.0) for name in self.names])

    def tell(self, trial: optuna.Trial, values: float | list[float]) -> None:
        """The candidate's objective values, to the sampler and the study."""
        self._finish(trial, values=values)

    def fail(self, trial: optuna.Trial, failed: CandidateError) -> None:
        """A candidate that failed on its own: FAIL with its reason (it used budget)."""
        self._finish(trial, state=TrialState.FAIL, reason=str(failed))

    @contextlib.contextmanager
    def candidate(self, trial: optuna.Trial) -> Iterator[None]:
        """Around one candidate: a CandidateError fails only its trial; a trial another worker
        failed meanwhile (its heartbeat looked stale) is left to that worker's retry; anything
        else fails the trial, as Optuna's optimize() does, and goes on up."""
        try:
            yield
        except CandidateError as failed:
            self.fail(trial, failed)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
            if not adapter.finished_elsewhere(e):
                self._finish(trial, state=TrialState.FAIL)
                raise
            self._taken_over(trial, e)
        except BaseException:
            self._finish(trial, state=TrialState.FAIL)
            raise

    def _finish(
        self,
        trial: optuna.Trial,
        *,
        values: Any = None,
        state: TrialState | None = None,
        reason: str | None = None,
    ) -> None:
        self._stop_beat()  # before the trial is told, as in Optuna's optimize()
        try:
            if reason is not None:
                write_failure(trial, reason)
            self.study.tell(trial, values, state=state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
            if not adapter.finished_elsewhere(e):
                raise
            self._taken_over(trial, e)

    def _taken_over(self, trial: optuna.Trial, e: Exception) -> None:
        # Another worker saw this one's heartbeat go stale (a stalled machine) and failed the
        # trial; its retry evaluates the genome. Nothing is counted twice.
        self._stop_beat()
        tqdm.write(f"{self.worker}: trial {trial.number} failed by another worker ({e})")

    def _stop_beat(self) -> None:
        if self._beat is not None:
            self._beat.close()
        self._beat = None
