"""Samplers of the search: CMA-ES (Optuna's, or ours on pycma), TPE and random baselines, and
NSGA-II for several objectives (TPE and random take several objectives too)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from evomerge.errors import ConfigError
from evomerge.genome import GenomeSpace
from evomerge.search.config import NSGA2_POPULATION_DEFAULT, OptimizerSpec


def make_sampler(
    spec: OptimizerSpec, space: GenomeSpace, seed: int, x0: np.ndarray | None = None
) -> BaseSampler:
    """The optimizer's sampler; CMA-ES starts at `x0` (default: the space's uniform merge)."""
    start = space.x0() if x0 is None else x0
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(
            x0=dict(zip(space.names, start.tolist(), strict=True)),
            sigma0=spec.sigma0,
            seed=seed,
            n_startup_trials=0,
            popsize=spec.population_size,
            restart_strategy=spec.restart_strategy,
            warn_independent_sampling=False,
            # Until a first trial completes, CMA-ES has no search space and samples from this;
            # seeded per trial, so workers starting together do not all draw the same genome.
            independent_sampler=PerTrialSeed(lambda s: optuna.samplers.RandomSampler(seed=s), seed),
        )
    if spec.sampler == "pycma":
        from evomerge.search.pycma import PyCmaSampler

        if spec.restart_strategy is not None:
            raise ConfigError(
                f"optimizer.restart_strategy: sampler pycma has no restarts, "
                f"got {spec.restart_strategy!r}; set it to null or use sampler=cmaes"
            )
        return PyCmaSampler(
            x0=start,
            names=space.names,
            sigma0=spec.sigma0,
            seed=seed,
            popsize=spec.population_size,
        )
    if spec.sampler == "tpe":
        return PerTrialSeed(
            lambda s: optuna.samplers.TPESampler(
                seed=s,
                multivariate=True,
                n_startup_trials=spec.n_startup_trials,
                constant_liar=True,  # parallel workers do not all sample the same point
            ),
            seed,
        )
    if spec.sampler == "nsga2":
        return PerTrialSeed(lambda s: nsga2(spec, s), seed)
    return PerTrialSeed(lambda s: optuna.samplers.RandomSampler(seed=s), seed)


def nsga2(spec: OptimizerSpec, seed: int) -> BaseSampler:
    """Optuna's NSGA-II (Deb et al., 2002). Its generations live in the study's trials, so a
    fresh sampler per trial (PerTrialSeed) continues the same run; constraints, set on each
    trial, rank feasible candidates first (constrained domination)."""
    from optuna.samplers.nsgaii import SBXCrossover, UniformCrossover

    with warnings.catch_warnings():
        # experimental in Optuna since 3.0 (its interface may change); the NSGA-II paper's own
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        crossover = SBXCrossover() if spec.crossover == "sbx" else UniformCrossover()
    return optuna.samplers.NSGAIISampler(
        population_size=spec.population_size or NSGA2_POPULATION_DEFAULT,
        seed=seed,
        crossover=crossover,
    )


class PerTrialSeed(BaseSampler):
    """Runs each trial with a fresh `make(s)`, s drawn from (seed, trial number).

    A sampler seeded once replays its random stream from the start in every process: a resumed
    run, or a second worker on the same study, would propose the first run's genomes again.
    Seeding per trial number keeps runs reproducible and makes every trial's draw its own.
    For samplers whose only state is their generator and the study (random, TPE, NSGA-II,
    whose generations are system attrs of the trials).
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make = make
        self._seed = seed
        self._by_trial: dict[int, BaseSampler] = {}

    def _of(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._by_trial:
            s = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
            self._by_trial[trial.number] = self._make(int(s))
        return self._by_trial[trial.number]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._of(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._of(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        pass  # every trial's generator is already its own
