"""A resumed search keeps what fitness means: a change to it is refused in one line naming the
key and both values, before any file changes; changes that leave fitness alone resume."""

import sqlite3
from pathlib import Path

import optuna
import pytest

from evomerge.__main__ import main
from evomerge.config import compose
from evomerge.errors import SearchError
from evomerge.search.config import search_config
from evomerge.search.space import build_space
from evomerge.search.study import FITNESS_MEANING, check_resumable
from evomerge_dev.testing import SMALL_SEARCH

RUN = ("run=r", "score_test=false", *SMALL_SEARCH)


def search(tmp_path: Path, *overrides: str) -> int:
    return main(["search", f"results_dir={tmp_path}", *RUN, *overrides])


def files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def started(toy_cache, tmp_path_factory) -> Path:
    """A run of one scored trial (its study and config.yaml), shared by the cases below."""
    results = tmp_path_factory.mktemp("resume")
    assert search(results, "optimizer.n_trials=1") == 0
    return results


@pytest.mark.parametrize(
    ("override", "key", "was", "now"),
    [
        ("seed=3", "seed", "0", "3"),
        ("evaluator.limit=20", "evaluator.limit", "40", "20"),
        ("estimator=subset", "estimator.kind", '"full"', '"subset"'),
        ("estimator.race=true", "estimator.race", "false", "true"),
        ("task.fitness.0.weight=2.0", "task.fitness", '"weight": 1.0', '"weight": 2.0'),
        ("task.fitness.0.task=nope", "task.fitness", "toy_mgsm_ja_fit", "nope"),
        ("evaluator.num_fewshot=1", "evaluator.num_fewshot", "null", "1"),
        ("space.x0_density=0.4", "space.x0_density", "0.5", "0.4"),
        ("models.dtype=bfloat16", "models.dtype", "null", '"bfloat16"'),
    ],
)
def test_a_change_of_fitness_is_refused_before_anything_changes(
    started, capsys, override, key, was, now
):
    run_dir = started / "r"
    before = files(run_dir)
    capsys.readouterr()
    assert search(started, "optimizer.n_trials=1", override) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"evomerge search: error: {key}: run 'r' was started with ")
    head, _, tail = err.partition("this command has")
    assert was in head and now in tail
    assert files(run_dir) == before  # config.yaml not rewritten, study untouched


def test_changes_that_leave_fitness_alone_resume(started, capsys):
    """More trials, other threads and heartbeat, test tasks, progress: the same fitness."""
    overrides = ("optimizer.n_trials=2", "threads=2", "heartbeat_s=30", "task.test=[]")
    assert search(started, *overrides) == 0
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{started / 'r' / 'study.db'}")
    assert len(study.trials) == 2
    assert study.user_attrs[FITNESS_MEANING]["seed"] == "0"


def test_an_unknown_task_is_refused_before_the_run_directory_is_made(toy_cache, tmp_path, capsys):
    assert search(tmp_path, "optimizer.n_trials=1", "task.test=[no_such_task_x]") == 2
    err = capsys.readouterr().err.strip()
    assert "task: unknown task 'no_such_task_x'" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_study_from_before_the_record_is_checked_against_its_config_yaml(started):
    """A study that holds no fitness settings (made before they were recorded) is compared
    with the config.yaml its run wrote."""
    run_dir = started / "r"
    db = sqlite3.connect(run_dir / "study.db")
    with db:
        db.execute("DELETE FROM study_user_attributes WHERE key = ?", (FITNESS_MEANING,))
    db.close()
    base = [*RUN, f"results_dir={started}", "optimizer.n_trials=1"]
    same = search_config(compose("search", base))
    check_resumable(same, build_space(same))  # the same settings: accepted
    other = search_config(compose("search", [*base, "seed=5"]))
    with pytest.raises(SearchError, match="seed: run 'r' was started with 0, this command has 5"):
        check_resumable(other, build_space(other))


def test_a_change_of_fitness_is_refused_before_the_space_is_built(started, capsys, monkeypatch):
    # space=ps_dfs builds its PS model into the run directory while the space is built
    import evomerge.search.cli as search_cli

    def build(cfg):
        raise AssertionError("the space was built before the resume was checked")

    monkeypatch.setattr(search_cli, "build_space", build)
    before = files(started / "r")
    capsys.readouterr()
    assert search(started, "optimizer.n_trials=1", "seed=5") == 2
    assert "seed: run 'r' was started with" in capsys.readouterr().err
    assert files(started / "r") == before
