"""Samplers of the search: CMA-ES (Optuna's, or ours on pycma), TPE and random baselines."""

from __future__ import annotations

import optuna
from optuna.samplers import BaseSampler

from evomerge.genome import GenomeSpace
from evomerge.search.config import OptimizerSpec


def make_sampler(spec: OptimizerSpec, space: GenomeSpace, seed: int) -> BaseSampler:
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(
            x0=dict(zip(space.names, space.x0().tolist(), strict=True)),
            sigma0=spec.sigma0,
            seed=seed,
            n_startup_trials=0,
            popsize=spec.population_size,
            restart_strategy=spec.restart_strategy,
            warn_independent_sampling=False,
        )
    if spec.sampler == "pycma":
        from evomerge.search.pycma import PyCmaSampler

        return PyCmaSampler(
            x0=space.x0(),
            names=space.names,
            sigma0=spec.sigma0,
            seed=seed,
            popsize=spec.population_size,
        )
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            n_startup_trials=spec.n_startup_trials,
            constant_liar=True,  # parallel workers do not all sample the same point
        )
    return optuna.samplers.RandomSampler(seed=seed)
