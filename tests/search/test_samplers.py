"""One contract suite for every sampler of the search (optuna-style), built by `make_sampler`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest

from evomerge.search.config import SAMPLERS, OptimizerSpec
from evomerge.search.samplers import make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
CMA_SAMPLERS = ("cmaes", "pycma")
D = 6
OPTIMUM = np.linspace(0.15, 0.35, D)  # off-centre, so the start (0.5) is not the answer


@dataclass(frozen=True)
class Box:
    """The part of a GenomeSpace a sampler sees: named coordinates in [0, 1] and the start."""

    names: tuple[str, ...] = tuple(f"x{i}" for i in range(D))

    def x0(self) -> np.ndarray:
        return np.full(len(self.names), 0.5)


def sampler(name: str, seed: int = 0) -> optuna.samplers.BaseSampler:
    spec = OptimizerSpec(
        name=name, sampler=name, n_trials=1, population_size=6, sigma0=0.2, n_startup_trials=10
    )
    return make_sampler(spec, Box(), seed)  # type: ignore[arg-type]


def quadratic(trial: optuna.Trial) -> float:
    x = np.array([trial.suggest_float(n, 0.0, 1.0) for n in Box().names])
    return float(np.sum((x - OPTIMUM) ** 2))


def genomes(study: optuna.Study) -> list[tuple[float, ...]]:
    return [tuple(t.params[n] for n in Box().names) for t in study.trials]


def run(name: str, n_trials: int, seed: int = 0, storage: str | None = None) -> optuna.Study:
    study = optuna.create_study(
        study_name="s", storage=storage, sampler=sampler(name, seed), load_if_exists=True
    )
    study.optimize(quadratic, n_trials=n_trials)
    return study


@pytest.mark.parametrize("name", SAMPLERS)
def test_proposals_stay_in_the_box(name: str) -> None:
    x = np.array(genomes(run(name, 20)))
    assert x.shape == (20, D)
    assert ((x >= 0.0) & (x <= 1.0)).all()


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_proposals_other_seed_others(name: str) -> None:
    first, again, other = (genomes(run(name, 14, seed)) for seed in (3, 3, 4))
    assert first == again
    assert first != other


@pytest.mark.parametrize("name", SAMPLERS)
def test_resumed_study_continues_without_repeating_or_losing_trials(
    name: str, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run(name, 5, storage=storage)
    study = run(name, 5, storage=storage)  # a new Study object and sampler on the same file
    assert [t.number for t in study.trials] == list(range(10))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len(set(genomes(study))) == 10, "a resumed sampler proposed a genome again"


@pytest.mark.parametrize("name", CMA_SAMPLERS)
def test_cma_es_improves_on_a_quadratic(name: str) -> None:
    start = float(np.sum((Box().x0() - OPTIMUM) ** 2))
    study = run(name, 60)
    assert study.best_value < 0.1 * start
    # and it beats uniform random search with the same budget
    assert study.best_value < run("random", 60).best_value
