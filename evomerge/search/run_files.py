"""A search run directory's files, as `export`, `report` and `dashboard` read them: config.yaml
through the search's own YAML limits and typed checks, summary.json with a size and depth
bound, and the study only from an Optuna database that already exists (an SQLite file inside
the run directory, or a server's URL); every bad file is one line naming it, and nothing here
creates or writes a file."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from evomerge.errors import EvomergeError, SearchError, preview
from evomerge.search.config import SearchConfig, search_config
from evomerge.search.study import sqlalchemy_url
from evomerge.yaml_limits import MAX_YAML_DEPTH, load_yaml, read_text_file

CONFIG = "config.yaml"
SUMMARY = "summary.json"
STUDY = "study.db"
# summary.json is a few KB (a summary and the winner's metrics); 16 MiB, the limit on the
# JSON files of a model (merge/confine.py), bounds the read and the parse.
MAX_SUMMARY_BYTES = 16 * 2**20
# Its nesting is 3 levels (task -> metric -> value); the YAML bound is plenty and stops a
# deeply nested file before the JSON parser's recursion does.
MAX_SUMMARY_DEPTH = MAX_YAML_DEPTH
SERVER_SCHEMES = ("postgresql", "mysql")  # shared studies on a database server (storage=)


@dataclass(frozen=True)
class RunFiles:
    """A run directory with its config.yaml read and checked, and its study's storage URL."""

    run_dir: Path
    raw: dict[str, Any]  # config.yaml as the search composed it
    cfg: SearchConfig
    storage: str  # an SQLAlchemy URL of an existing study database


def read_run(run_dir: Path) -> RunFiles:
    """The run's config.yaml, checked as the search checks it, and the storage it names."""
    raw, cfg = read_config(run_dir)
    return RunFiles(run_dir, raw, cfg, study_storage(run_dir, cfg))


def read_config(run_dir: Path) -> tuple[dict[str, Any], SearchConfig]:
    path = run_dir / CONFIG
    if not path.is_file():
        raise SearchError(f"{run_dir}: no {CONFIG}; not a search run directory")
    raw = load_yaml(read_text_file(path, what="run config"), str(path))
    if not isinstance(raw, dict):
        raise SearchError(f"{path}: expected a mapping of settings, got {preview(raw)}")
    try:
        return raw, search_config(raw)
    except EvomergeError as e:
        raise SearchError(f"{path}: {e}") from None


def study_storage(run_dir: Path, cfg: SearchConfig) -> str:
    """The storage URL of the run's study: its own study.db by default; a `storage:` SQLite
    file only inside the run directory, and only an existing Optuna database."""
    if cfg.storage is None:
        return sqlite_url(run_dir / STUDY, run_dir)
    scheme = cfg.storage.partition(":")[0].partition("+")[0]
    if scheme == "sqlite":
        path = Path(cfg.storage.removeprefix("sqlite:///"))
        if not path.resolve().is_relative_to(run_dir.resolve()):
            raise SearchError(
                f"{run_dir / CONFIG}: storage: {preview(cfg.storage)} is outside the run "
                f"directory; a run's SQLite study lives in it (e.g. {run_dir / STUDY})"
            )
        return sqlite_url(path, run_dir)
    if scheme not in SERVER_SCHEMES:
        raise SearchError(
            f"{run_dir / CONFIG}: storage: must be sqlite:///<file in the run directory>, "
            f"postgresql://... or mysql://..., got {preview(cfg.storage)}"
        )
    return sqlalchemy_url(cfg.storage)


def sqlite_url(path: Path, run_dir: Path) -> str:
    """`sqlite:///path` once the file is an existing Optuna study database, checked on a
    read-only connection (opening a missing or foreign file with Optuna would create one)."""
    if not path.is_file():
        raise SearchError(f"{run_dir}: no {path.name}; has the search started?")
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error as e:
        raise SearchError(f"{path}: not a readable SQLite study ({e})") from None
    if "studies" not in {name for (name,) in rows}:
        raise SearchError(f"{path}: an SQLite file without Optuna's tables; not a study")
    return f"sqlite:///{path}"


def load_run_study(run: RunFiles) -> optuna.Study:
    """The run's study, loaded (never created) from its storage."""
    name = run.cfg.run
    try:
        return optuna.load_study(study_name=name, storage=run.storage)
    except KeyError:
        raise SearchError(
            f"{run.run_dir}: the storage {preview(run.storage)} holds no study {name!r}"
        ) from None
    except Exception as e:  # the database refused (a damaged file, a server that is down)
        raise SearchError(f"{run.run_dir}: cannot read the study: {type(e).__name__}") from e


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json ({} where there is none), bounded in size and depth."""
    path = run_dir / SUMMARY
    if not path.exists():
        return {}
    text = read_text_file(path, limit=MAX_SUMMARY_BYTES, what="run summary")
    try:
        data = json.loads(text)
    except RecursionError:
        raise SearchError(f"{path}: nested deeper than {MAX_SUMMARY_DEPTH} levels") from None
    except ValueError as e:
        raise SearchError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SearchError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if depth(data) > MAX_SUMMARY_DEPTH:
        raise SearchError(f"{path}: nested deeper than {MAX_SUMMARY_DEPTH} levels")
    return data


def depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_SUMMARY_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node
        if isinstance(node, dict | list):
            stack.extend((child, level + 1) for child in children)
    return deepest
