"""PyCmaSampler: state replayed from the study (resume, workers, failures), pycma's own asks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cma
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from evomerge.errors import ConfigError
from evomerge.search.pycma import PyCmaSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
NAMES = ("a", "b", "c", "d")
POP = 4


def make(seed: int = 0) -> PyCmaSampler:
    return PyCmaSampler(np.full(4, 0.5), NAMES, sigma0=0.2, seed=seed, popsize=POP)


def quadratic(trial: optuna.Trial) -> float:
    x = np.array([trial.suggest_float(n, 0.0, 1.0) for n in NAMES])
    return float(np.sum((x - 0.25) ** 2))


def genome(trial: optuna.trial.FrozenTrial | optuna.Trial) -> tuple[float, ...]:
    return tuple(trial.params[n] for n in NAMES)


def suggest(trial: optuna.Trial) -> tuple[float, ...]:
    return tuple(trial.suggest_float(n, 0.0, 1.0) for n in NAMES)


def test_asks_are_pycmas_own() -> None:
    """Generation 0 is exactly what pycma asks with our seeded generator and options."""
    study = optuna.create_study(sampler=make(seed=7))
    study.optimize(quadratic, n_trials=POP)
    rng = np.random.default_rng(7)
    es = cma.CMAEvolutionStrategy(
        np.full(4, 0.5),
        0.2,
        {
            "bounds": [0, 1],
            "popsize": POP,
            "seed": np.nan,
            "randn": lambda *s: rng.standard_normal(s),
            "verbose": -9,
            "verb_log": 0,
        },
    )
    assert [genome(t) for t in study.trials] == [tuple(x) for x in es.ask()]


def test_global_numpy_random_state_neither_used_nor_changed() -> None:
    np.random.seed(1)
    first = optuna.create_study(sampler=make())
    first.optimize(quadratic, n_trials=2 * POP + 1)
    after = np.random.get_state()[1].copy()
    np.random.seed(2)
    again = optuna.create_study(sampler=make())
    again.optimize(quadratic, n_trials=2 * POP + 1)
    assert [genome(t) for t in first.trials] == [genome(t) for t in again.trials]
    np.random.seed(1)
    assert (np.random.get_state()[1] == after).all()


def test_resume_in_a_new_process_gives_the_uninterrupted_run(tmp_path: Path) -> None:
    whole = optuna.create_study(sampler=make())
    whole.optimize(quadratic, n_trials=3 * POP + 2)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    part = optuna.create_study(study_name="s", storage=storage, sampler=make())
    part.optimize(quadratic, n_trials=POP + 2)  # stop in the middle of generation 1
    script = f"""
        import numpy as np, optuna
        from evomerge.search.pycma import PyCmaSampler
        names = {NAMES!r}
        def quadratic(trial):
            x = np.array([trial.suggest_float(n, 0.0, 1.0) for n in names])
            return float(np.sum((x - 0.25) ** 2))
        sampler = PyCmaSampler(np.full(4, 0.5), names, sigma0=0.2, seed=0, popsize={POP})
        study = optuna.load_study(study_name="s", storage={storage!r}, sampler=sampler)
        study.optimize(quadratic, n_trials={2 * POP})
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True)
    resumed = optuna.load_study(study_name="s", storage=storage)
    assert [genome(t) for t in resumed.trials] == [genome(t) for t in whole.trials]


def test_workers_get_the_generation_by_index_then_a_duplicate_of_a_running_one() -> None:
    sampler = make()
    study = optuna.create_study(sampler=sampler)
    running = [study.ask() for _ in range(POP)]  # POP workers, none finished
    asked = sampler.replay(study.trials, study.direction)[0].asked
    assert [suggest(t) for t in running] == [tuple(x) for x in asked]
    for t in running[1:]:
        study.tell(t, 1.0)
    straggler = study.ask()  # generation 0 all taken, candidate 0 still running
    assert suggest(straggler) == suggest(running[0])
    study.tell(straggler, 2.0)  # the duplicate finished first: it decides candidate 0
    study.tell(running[0], 0.0)
    (gen0, gen1) = sampler.replay(study.trials, study.direction)
    assert gen0.result(0) is not None and gen0.result(0).number == straggler.number
    assert suggest(study.ask()) == tuple(gen1.asked[0])


def test_failed_candidate_is_told_the_worst_value_of_its_generation() -> None:
    sampler = make()
    study = optuna.create_study(sampler=sampler, direction="maximize")
    values = [0.3, None, 0.9, 0.5]
    for v in values:
        t = study.ask()
        suggest(t)
        study.tell(t, v, state=TrialState.FAIL if v is None else TrialState.COMPLETE)
    gen0 = sampler.replay(study.trials, study.direction)[0]
    from evomerge.search.pycma import costs

    assert costs(gen0, study.direction) == [-0.3, -0.3, -0.9, -0.5]  # pycma minimizes


@pytest.mark.parametrize("written", [4, 3, 1])
def test_a_lost_trial_that_is_retried_changes_nothing_told(written: int) -> None:
    """The worker died after writing `written` of the 4 parameters; the retry holds those."""
    values = [0.3, 0.7, 0.9, 0.5]
    plain = optuna.create_study(sampler=make(), direction="maximize")
    for v in values:
        t = plain.ask()
        suggest(t)
        plain.tell(t, v)
    sampler = make()
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for v in values[:3]:
        t = study.ask()
        suggest(t)
        study.tell(t, v)
    lost = study.ask()
    for name in NAMES[:written]:
        lost.suggest_float(name, 0.0, 1.0)
    study.tell(lost, state=TrialState.FAIL)  # what the heartbeat does to a dead worker's trial
    frozen = study.trials[lost.number]
    assert len(frozen.params) == written
    study.add_trial(  # what RetryHeartbeatStaleTrialCallback enqueues
        optuna.create_trial(
            state=TrialState.WAITING,
            params=frozen.params,
            distributions=frozen.distributions,
            system_attrs={"failed_trial": lost.number, "retry_history": [lost.number]},
        )
    )
    retry = study.ask()
    assert suggest(retry) == genome(plain.trials[3])  # the lost trial's candidate, whole
    study.tell(retry, values[3])
    gen0 = sampler.replay(study.trials, study.direction)[0]
    assert gen0.result(3) is not None and gen0.result(3).number == retry.number
    assert suggest(study.ask()) == suggest(plain.ask())  # generation 1 as if nothing happened


def test_enqueued_trials_are_evaluated_but_not_told() -> None:
    sampler = make()
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial(dict.fromkeys(NAMES, 0.5))  # the uniform merge, evaluated first
    study.optimize(quadratic, n_trials=POP + 1)
    gens = sampler.replay(study.trials, study.direction)
    assert len(gens) == 2 and gens[0].closed()
    assert [len(c) for c in gens[0].trials] == [1] * POP  # trials 1..POP, not trial 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x0": np.full(3, 0.5)}, "x0 has shape"),
        ({"x0": np.full(4, 1.5)}, "x0 must lie in [0, 1]"),
        ({"sigma0": 0.0}, "sigma0: must be > 0"),
        ({"popsize": 1}, "population_size: must be >= 2"),
    ],
)
def test_bad_arguments_name_the_rule(kwargs: dict, message: str) -> None:
    args = {"x0": np.full(4, 0.5), "names": NAMES, "sigma0": 0.2, "seed": 0} | kwargs
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PyCmaSampler(**args)
