"""CMA-ES on pycma (Hansen's reference implementation) as an Optuna sampler.

The study is the checkpoint, so the sampler keeps no state of its own between calls. Each call
replays pycma from its seed over the study's trials: generation g's candidates are asked, each
is matched to the trials that evaluated it (by their parameters, which are exactly the asked
values), and when every candidate of g has a result the fitnesses are told and g + 1 is asked.
pycma draws its normal deviates from our seeded generator, so the same seed and the same
results give the same asks, in this process or after a restart.

Which result a candidate gets (fixed once known, so a replay never changes history):
- the first of its trials to finish decides (by completion time, then trial number);
- COMPLETE: its value; FAIL or PRUNED: the worst value of its generation (ranked last; when
  every candidate of a generation failed, all tie). Failed candidates are not re-asked: a
  genome that gave NaN or ran out of memory would do so again.
A trial lost with a dead worker is failed by the storage's heartbeat, which enqueues a retry
(same parameters, the lost trial's number in its retry history): the lost trial is then
ignored and the retry decides, so a killed worker changes nothing that is told. A worker killed
between its parameter writes leaves a retry holding the first few: the retry is given the rest
of the candidate those match. Once the retries are used up (no retry names it), the lost trial
counts as failed.

Several workers: a new trial gets the lowest-indexed candidate of the current generation that
no trial has taken yet. When all are taken but some are still running, it gets the running one
with the fewest trials (a duplicate: whichever finishes first is told), so an idle worker helps
a straggler, and a candidate whose worker died without a heartbeat still gets a result.
Trials whose parameters match no candidate (enqueued x0, warm starts) are evaluated but not
told: pycma's generations contain only its own samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cma
import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from evomerge.errors import ConfigError
from evomerge.search.optuna_adapter import retried_numbers

MATCH_TOL = 1e-9  # a trial evaluated a candidate iff its params equal the (clipped) ask
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
LIVE = (TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class Generation:
    """One generation as replayed: what pycma asked and the trials that evaluated each."""

    number: int
    asked: list[np.ndarray]  # (popsize) x (D,) as pycma returned them (told back unchanged)
    trials: list[list[FrozenTrial]]  # per candidate, the matching trials

    def result(self, k: int) -> FrozenTrial | None:
        """The trial that decides candidate k: the first to finish, or None while pending."""
        done = [t for t in self.trials[k] if t.state in FINISHED]
        return min(
            done, key=lambda t: (t.datetime_complete or datetime.max, t.number), default=None
        )

    def closed(self) -> bool:
        return all(self.result(k) is not None for k in range(len(self.asked)))

    def next_index(self) -> int:
        """The candidate a new trial should evaluate (only while the generation is open)."""
        for k, trials in enumerate(self.trials):
            if not trials:
                return k
        pending = [k for k in range(len(self.asked)) if self.result(k) is None]
        return min(pending, key=lambda k: (sum(t.state in LIVE for t in self.trials[k]), k))


class PyCmaSampler(BaseSampler):
    """CMA-ES over the box [0, 1]^D with pycma's ask/tell; state replayed from the study.

    x0: the start (the uniform merge), one value per name in [0, 1]; sigma0: the initial
    step size in box units; popsize: None for pycma's default 4 + floor(3 ln D).
    """

    def __init__(
        self,
        x0: np.ndarray,
        names: Sequence[str],
        sigma0: float,
        seed: int,
        popsize: int | None = None,
    ) -> None:
        x0 = np.asarray(x0, dtype=float)
        if x0.shape != (len(names),):
            raise ConfigError(f"pycma: x0 has shape {x0.shape}, expected ({len(names)},)")
        if not ((x0 >= 0) & (x0 <= 1)).all():
            raise ConfigError(f"pycma: x0 must lie in [0, 1], got {x0.tolist()}")
        if not sigma0 > 0:
            raise ConfigError(f"optimizer.sigma0: must be > 0, got {sigma0}")
        if popsize is not None and popsize < 2:
            raise ConfigError(f"optimizer.population_size: must be >= 2, got {popsize}")
        self.x0 = x0
        self.names = tuple(names)
        self.sigma0 = sigma0
        self.seed = seed
        self.popsize = popsize
        self._fallback = RandomSampler(seed=seed)  # only for parameters outside `names`

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {name: FloatDistribution(0.0, 1.0) for name in self.names}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if len(study.directions) != 1:
            raise ConfigError("pycma: the sampler supports single-objective studies only")
        if not search_space:
            return {}
        everything = study.get_trials(deepcopy=False)
        trials = [t for t in everything if t.number != trial.number]
        # a retry names the lost trial it replaces: that one is ignored even while the retry,
        # this trial, is left out of the matching
        generation = self.replay(trials, study.direction, retried_trials(everything))[-1]
        # a retry holds the parameters its lost trial had written (all or a first few): it
        # finishes that trial's candidate, whatever a new trial would be given
        k = candidate_of(generation.asked, trial, self.names)
        x = clip(generation.asked[generation.next_index() if k is None else k])
        return dict(zip(self.names, x.tolist(), strict=True))

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()  # our own asks stay a function of the seed and the study

    def new_strategy(self) -> cma.CMAEvolutionStrategy:
        rng = np.random.default_rng(self.seed)
        options: dict[str, Any] = {
            "bounds": [0.0, 1.0],  # pycma's BoundTransform: asks land inside the box
            "seed": np.nan,  # no global np.random seeding: every draw comes from `rng`
            "randn": lambda *shape: rng.standard_normal(shape),
            "verbose": -9,
            "verb_log": 0,  # no outcmaes/ files next to the study
            "verb_disp": 0,
        }
        if self.popsize is not None:
            options["popsize"] = self.popsize
        return cma.CMAEvolutionStrategy(self.x0, self.sigma0, options)

    def replay(
        self,
        trials: Sequence[FrozenTrial],
        direction: StudyDirection,
        retried: set[int] | None = None,
    ) -> list[Generation]:
        """Every generation so far: the closed ones (told) and the open one, last.

        FAILed trials that a retry replaced are ignored: those `retried` names (default: the
        ones the retries among `trials` name)."""
        if retried is None:
            retried = retried_trials(trials)
        trials = [t for t in trials if not (t.state == TrialState.FAIL and t.number in retried)]
        es, params = self.new_strategy(), param_matrix(trials, self.names)
        out: list[Generation] = []
        while True:
            asked = [np.asarray(x, dtype=float) for x in es.ask()]
            out.append(Generation(len(out), asked, match(trials, params, asked)))
            if not out[-1].closed():
                return out
            es.tell(asked, costs(out[-1], direction))


def retried_trials(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that the heartbeat's retries replace."""
    return {n for t in trials for n in retried_numbers(t)}


def candidate_of(
    asked: Sequence[np.ndarray], trial: FrozenTrial, names: Sequence[str]
) -> int | None:
    """The asked candidate whose values the trial's parameters so far all equal (None when it
    has none yet, or they match no candidate)."""
    hits = match([trial], param_matrix([trial], names), asked)
    return next((k for k, found in enumerate(hits) if found), None)


def clip(x: np.ndarray) -> np.ndarray:
    """BoundTransform's asks are in [0, 1] up to rounding; Optuna rejects even 1 + 1e-16."""
    return np.clip(x, 0.0, 1.0)


def param_matrix(trials: Sequence[FrozenTrial], names: Sequence[str]) -> np.ndarray:
    """(n_trials, D) params, NaN where a trial has no value yet (a worker mid-suggest)."""
    out = np.full((len(trials), len(names)), np.nan)
    for i, t in enumerate(trials):
        for j, name in enumerate(names):
            if name in t.params:
                out[i, j] = t.params[name]
    return out


def match(
    trials: Sequence[FrozenTrial], params: np.ndarray, asked: Sequence[np.ndarray]
) -> list[list[FrozenTrial]]:
    """Per asked candidate, the trials whose present params all equal it."""
    if not trials:
        return [[] for _ in asked]
    present = ~np.isnan(params)  # (T, D)
    has_any = present.any(axis=1)  # (T,)
    out = []
    for x in asked:
        close = np.abs(params - clip(x)) <= MATCH_TOL  # (T, D), NaN compares False
        hit = has_any & (close | ~present).all(axis=1)
        out.append([trials[int(i)] for i in np.flatnonzero(hit)])
    return out


def costs(generation: Generation, direction: StudyDirection) -> list[float]:
    """pycma minimizes: cost = -value when maximizing; failed candidates get the worst cost."""
    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    told: list[float | None] = []
    for k in range(len(generation.asked)):
        t = generation.result(k)
        value = t.value if t is not None and t.state == TrialState.COMPLETE else None
        told.append(None if value is None else sign * value)
    worst = max((c for c in told if c is not None), default=0.0)
    return [worst if c is None else c for c in told]
