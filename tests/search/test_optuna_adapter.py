"""What the search relies on past Optuna's public API, checked against the installed Optuna.

Every reach into Optuna's internals lives in evomerge/search/optuna_adapter.py; these tests
fail when an Optuna release changes one of them (a private attribute, the heartbeat table, the
retry history, the text of an error), and a scan fails when one appears anywhere else.
"""

import ast
import re
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from evomerge.search import optuna_adapter as adapter

pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning",
    "ignore:Heartbeat of storage is supposed to be used with Study.optimize:UserWarning",
)


def private_names(source: str) -> set[str]:
    """Private names a module reaches: `x._name`, `getattr(x, "_name")` and private modules
    imported from."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom):  # a private module: optuna.storages._heartbeat
            found.update((node.module or "").split("."))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr":
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                found.add(name.value)
    return {n for n in found if n.startswith("_") and n[1:2] != "_"}


# The private attributes the adapter reaches, read from its source.
ADAPTER_PRIVATE = private_names(Path(adapter.__file__).read_text(encoding="utf-8"))
# What only the adapter may name: those attributes, the heartbeat table, retry bookkeeping.
PRIVATE = re.compile(
    "|".join(rf"\.{re.escape(n)}\b|[\"']{re.escape(n)}[\"']" for n in sorted(ADAPTER_PRIVATE))
    + "|trial_heartbeats"
    + "|retry_history"
)


def study(tmp_path: Path) -> optuna.Study:
    storage = adapter.heartbeat_storage(
        f"sqlite:///{tmp_path / 's.db'}", {}, heartbeat_s=1, max_retry=2
    )
    return optuna.create_study(storage=storage)


def test_trial_ids_and_heartbeats_round_trip(tmp_path: Path) -> None:
    s = study(tmp_path)
    first, second = s.ask(), s.ask()
    frozen = s.get_trials(deepcopy=False)
    assert [adapter.trial_id(t) for t in frozen] == [
        adapter.trial_id(first),
        adapter.trial_id(second),
    ]
    storage = adapter.storage_of(s)
    assert adapter.heartbeat_on(storage)
    assert adapter.trials_with_heartbeat(s, frozen) == set()
    adapter.record_heartbeat(storage, second)
    assert adapter.trials_with_heartbeat(s, frozen) == {adapter.trial_id(second)}


def test_a_stale_trial_is_retried_and_its_retry_names_it(tmp_path: Path) -> None:
    s = study(tmp_path)
    lost = s.ask()
    lost.suggest_float("x", 0.0, 1.0)
    adapter.record_heartbeat(adapter.storage_of(s), lost)
    time.sleep(3.5)  # past the grace period (two beats; the storage keeps whole seconds)
    optuna.storages.fail_stale_trials(s)
    failed, retry = s.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert adapter.retried_numbers(retry) == [failed.number]
    assert adapter.retried_numbers(failed) == []


def test_telling_a_finished_trial_is_recognised(tmp_path: Path) -> None:
    s = study(tmp_path)
    trial = s.ask()
    s.tell(trial, state=TrialState.FAIL)
    with pytest.raises((optuna.exceptions.UpdateFinishedTrialError, ValueError)) as info:
        s.tell(trial, 1.0)
    assert adapter.finished_elsewhere(info.value)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError) as written:
        trial.set_user_attr("late", True)
    assert adapter.finished_elsewhere(written.value)
    assert not adapter.finished_elsewhere(ValueError("something else"))


def test_no_storage_without_heartbeats_is_taken_for_one(tmp_path: Path) -> None:
    plain = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}")
    plain.ask()
    assert not adapter.heartbeat_on(adapter.storage_of(plain))
    assert adapter.trials_with_heartbeat(plain, plain.get_trials()) is None


def test_a_trial_s_generation_is_its_sampler_s_or_a_block_of_trials() -> None:
    def generations(sampler: optuna.samplers.BaseSampler, n: int) -> list[int]:
        found: list[int] = []

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", 0, 1) + trial.suggest_float("y", 0, 1)
            found.append(adapter.generation_of(trial, 3))
            return x

        optuna.create_study(sampler=sampler).optimize(objective, n_trials=n)
        return found

    # CMA-ES: its first trial is sampled independently, then generations of popsize trials
    cma = optuna.samplers.CmaEsSampler(seed=0, popsize=4)
    assert generations(cma, 10) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]
    nsga = optuna.samplers.NSGAIISampler(seed=0, population_size=4)
    assert generations(nsga, 9) == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    tpe = optuna.samplers.TPESampler(seed=0)  # no generations: blocks of `window` trials
    assert generations(tpe, 7) == [0, 0, 0, 1, 1, 1, 2]


def test_only_the_adapter_reaches_into_optuna() -> None:
    root = Path(__file__).resolve().parents[2] / "evomerge"
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "optuna_adapter.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []


def test_the_guard_covers_every_private_name_the_adapter_uses() -> None:
    """The scan above looks for each of them; here they are named, so that a new reach in the
    adapter is a reviewed change to this list."""
    assert {
        "_backend",
        "_get_trials",
        "_heartbeat",
        "_storage",
        "_study_id",
        "_trial_id",
    } == ADAPTER_PRIVATE
    for name in ADAPTER_PRIVATE:
        assert PRIVATE.search(f"study.{name}") and PRIVATE.search(f'getattr(s, "{name}")')


def test_the_private_names_exist_in_the_installed_optuna(tmp_path: Path) -> None:
    s = study(tmp_path)
    trial = s.ask()
    storage = adapter.storage_of(s)
    backend = getattr(storage, "_backend", storage)
    assert isinstance(backend, optuna.storages.RDBStorage)
    assert isinstance(getattr(s, "_study_id"), int)  # noqa: B009 (the name is the point)
    assert adapter.trial_id(trial) == getattr(trial, "_trial_id")  # noqa: B009
    assert callable(getattr(backend, "_get_trials"))  # noqa: B009


def test_trials_since_reads_new_and_open_trials_in_one_query(tmp_path: Path) -> None:
    s = study(tmp_path)
    first = s.ask()
    s.tell(first, 1.0)
    second, third = s.ask(), s.ask()
    s.tell(third, 2.0)
    ids = [adapter.trial_id(t) for t in (first, second, third)]
    got = adapter.trials_since(s, ids[1], {ids[0]})
    assert sorted(adapter.trial_id(t) for t in got) == [ids[0], ids[2]]
    assert {adapter.trial_id(t): t.state for t in got}[ids[2]] == TrialState.COMPLETE


def test_the_heartbeat_thread_beats_for_an_asked_trial(tmp_path: Path) -> None:
    """The trial source asks and tells itself; the heartbeat Optuna's optimize() would run
    comes from the adapter, and a stale trial is failed and retried as optimize() would."""
    s = study(tmp_path)
    trial = adapter.ask(s)
    with adapter.heartbeat_thread(trial):
        time.sleep(1.5)  # one beat interval
        beating = adapter.trials_with_heartbeat(s, s.get_trials(deepcopy=False))
    assert beating == {adapter.trial_id(trial)}
    trial.suggest_float("x", 0.0, 1.0)
    time.sleep(3.5)  # no beat since: past the grace period
    adapter.fail_stale_trials(s)
    failed, retry = s.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
