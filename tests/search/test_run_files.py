"""`export`, `report` and `dashboard` read a run's files with the search's checks and limits:
a hand-edited or hostile file is one line naming it (exit 2), no file is created or read
outside the run directory, and usage errors are one line."""

import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from evomerge.__main__ import main
from evomerge.config import compose, dump_config
from evomerge.errors import SearchError
from evomerge.search.run_files import MAX_SUMMARY_DEPTH, read_run, read_summary

COMMANDS = ("export", "report", "dashboard")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A run directory as the search leaves it: config.yaml, a study with one trial."""
    run_dir = tmp_path_factory.mktemp("runs") / "r"
    run_dir.mkdir()
    raw = compose("search", ["run=r", f"results_dir={run_dir.parent}"])
    (run_dir / "config.yaml").write_text(dump_config(raw))
    study = optuna.create_study(study_name="r", storage=f"sqlite:///{run_dir / 'study.db'}")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    (run_dir / "summary.json").write_text('{"run": "r", "trials": 1}')
    return run_dir


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(good_run, copy)
    return copy


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def refused(cmd: str, run_dir: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    assert main([cmd, str(run_dir), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def set_key(run_dir: Path, key: str, value: object) -> None:
    """Edit config.yaml by hand: `key` (dotted) set to `value`, or removed where it is DROP."""
    path = run_dir / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    *parents, last = key.split(".")
    node = cfg
    for k in parents:
        node = node[k]
    if value is DROP:
        del node[last]
    else:
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))


DROP = object()


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "config.yaml").write_text("run: [r\n"), "config.yaml: malformed YAML"),
        (lambda d: set_key(d, "task", "oops"), "config.yaml: task: must be a mapping"),
        (lambda d: set_key(d, "task.fitness", [1, 2]), "config.yaml: task.fitness[0]"),
        (lambda d: set_key(d, "models.sources", ["a", "b"]), "models.sources: need a mapping"),
        (lambda d: set_key(d, "run", DROP), "config.yaml: run: missing"),
        (lambda d: (d / "config.yaml").write_text(BOMB), "config.yaml"),
        (lambda d: (d / "config.yaml").write_text("- a\n- b\n"), "expected a mapping"),
        (lambda d: (d / "config.yaml").unlink(), "no config.yaml; not a search run directory"),
        (lambda d: (d / "study.db").write_text("not a database\n" * 100), "study.db: not a"),
        (lambda d: (d / "study.db").unlink(), "no study.db; has the search started"),
    ],
)
@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_bad_run_file_is_one_line_naming_it(run, capsys, cmd, edit, message):
    edit(run)
    before = files_under(run)
    err = refused(cmd, run, capsys)
    assert message in err and str(run) in err
    assert files_under(run) == before


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_storage_outside_the_run_directory_is_neither_read_nor_created(
    run, tmp_path, capsys, cmd
):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for storage in ("sqlite:////etc/passwd", f"sqlite:///{outside / 'new.db'}"):
        set_key(run, "storage", storage)
        err = refused(cmd, run, capsys)
        assert "storage:" in err and "outside the run directory" in err
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("cmd", COMMANDS)
def test_no_database_is_created_or_changed_inside_the_run_either(run, capsys, cmd):
    import sqlite3

    set_key(run, "storage", f"sqlite:///{run / 'other.db'}")
    assert "no other.db" in refused(cmd, run, capsys)
    assert not (run / "other.db").exists()
    db = sqlite3.connect(run / "other.db")  # an SQLite file that is not a study
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    before = (run / "other.db").read_bytes()
    assert "without Optuna's tables" in refused(cmd, run, capsys)
    assert (run / "other.db").read_bytes() == before


def test_another_storage_scheme_is_refused(run):
    set_key(run, "storage", "file:///etc/passwd")
    with pytest.raises(SearchError, match="storage: must be sqlite"):
        read_run(run)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than"),  # past the parser's recursion
        ('{"a": ' * 200 + "1" + "}" * 200, "nested deeper than"),  # within it, past the bound
        ("{bad json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_a_bad_summary_is_one_line_naming_it(run, capsys, text, message):
    (run / "summary.json").write_text(text)
    with pytest.raises(SearchError, match=message):
        read_summary(run)
    err = refused("export", run, capsys)
    assert "summary.json" in err and message in err
    assert not (run / "best_model").exists()


def test_a_summary_at_the_depth_bound_reads(run):
    (run / "summary.json").write_text('{"a": ' * (MAX_SUMMARY_DEPTH - 1) + "1" + "}" * 63)
    assert read_summary(run)["a"]


@pytest.mark.parametrize(
    "argv",
    [
        ["report"],
        ["report", "a", "b"],
        ["export", "x", "--trial", "one"],
        ["export", "x", "--device", "tpu"],
        ["dashboard", "x", "--port", "http"],
        ["dashboard"],
        ["search", "--bogus"],
    ],
)
def test_usage_errors_are_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"evomerge {argv[0]}: error: ") and "\n" not in err
    assert "--help" in err
