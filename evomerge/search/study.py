"""The Optuna study is the run's checkpoint: storage, creation or resume, first candidates, best trial."""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.errors import PREVIEW_CHARS, EvomergeError, SearchError
from evomerge.genome import GenomeSpace
from evomerge.search.config import SearchConfig, fitness_settings
from evomerge.search.goals import check_directions, study_directions
from evomerge.search.optuna_adapter import (
    close_storage,
    heartbeat_storage,
    study_user_attrs,
)
from evomerge.search.pareto import chosen
from evomerge.search.samplers import make_sampler
from evomerge.search.space import RunSpace
from evomerge.search.warmstart import GRID_SIZE, grid_points
from evomerge.yaml_limits import load_yaml, read_text_file

OPEN_ATTEMPTS = 5  # tries to open the storage (see open_study)
SEEDED = "seeded"  # study user attr: its first candidates (x0, warm starts) are enqueued
SEED_WAIT_S = 10.0  # how long a process opening an unseeded study gives its creator
FITNESS_MEANING = "fitness_settings"  # study user attr: {key path: JSON value} (config.py)
UNSET = "(unset)"  # a fitness setting one of the two configs does not have


def open_study(cfg: SearchConfig, space: GenomeSpace) -> optuna.Study:
    """Create or resume the run's study; refuse to resume one from a different space."""
    storage = open_storage(cfg)
    sampler = make_sampler(cfg.optimizer, space, cfg.seed)
    try:
        # Workers started together race to create the study; the storage lets exactly one
        # win, and only that one enqueues the first candidates (else each would, once).
        study = optuna.create_study(
            study_name=cfg.run,
            storage=storage,
            sampler=sampler,
            directions=study_directions(cfg.task.goals),
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=cfg.run, storage=storage, sampler=sampler)
        created = False
    stored = study.user_attrs.get("space_fingerprint")
    check_fingerprint(cfg, space, stored)
    check_fitness_meaning(cfg, study.user_attrs.get(FITNESS_MEANING))
    if stored is None:
        study.set_user_attr("space_fingerprint", space.fingerprint())
        study.set_user_attr("space_names", list(space.names))
    if FITNESS_MEANING not in study.user_attrs and cfg.fitness_meaning:
        study.set_user_attr(FITNESS_MEANING, dict(cfg.fitness_meaning))
    check_directions(study, cfg.task.goals, cfg.run)
    if created:
        seed_first_candidates(study, cfg, space)
    elif not seeded(study):
        # Its creator may have been killed between creating the study and seeding it. A live
        # creator seeds within milliseconds; one that has not in SEED_WAIT_S is dead.
        deadline = time.monotonic() + SEED_WAIT_S
        while not seeded(study) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not seeded(study):
            seed_first_candidates(study, cfg, space)
    return study


def open_storage(cfg: SearchConfig) -> Any:
    """The run's storage with a heartbeat, retried while workers started together race to
    create Optuna's tables."""
    engine: dict[str, Any] = {}
    if cfg.storage is None:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)  # the default study file lives there
    if cfg.storage_url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 120}}  # several local workers may write at once
        if cfg.sqlite_wal:
            use_sqlite_wal(cfg.storage_url)
    attempt = 1
    while True:
        try:
            return heartbeat_storage(
                sqlalchemy_url(cfg.storage_url),
                engine,
                heartbeat_s=cfg.heartbeat_s,
                max_retry=cfg.max_retry,
            )
        except Exception as e:
            # Workers started together on an empty PostgreSQL database race to create Optuna's
            # tables: the losers fail once with a duplicate-type error; the tables exist then.
            if attempt == OPEN_ATTEMPTS:
                raise SearchError(f"storage: cannot open {cfg.storage_url!r}: {e}") from e
            time.sleep(0.2 * attempt)
            attempt += 1


@contextlib.contextmanager
def opened_study(cfg: SearchConfig, space: GenomeSpace) -> Iterator[optuna.Study]:
    """`open_study`, with the storage's connections closed when the block ends."""
    study = open_study(cfg, space)
    try:
        yield study
    finally:
        close_storage(study)


def check_resumable(cfg: SearchConfig, space: GenomeSpace | None) -> None:
    """Refuse, before anything is written, a run whose existing study gives fitness another
    meaning or (given the space) has another space. Without the space it checks the meaning
    only: the entry point does that before building the space, which for `space=ps_dfs`
    writes `<run_dir>/ps_model`."""
    if cfg.storage is None and not (cfg.run_dir / "study.db").is_file():
        return  # a new run
    try:
        stored = study_user_attrs(sqlalchemy_url(cfg.storage_url), cfg.run)
    except Exception:  # any storage error is open_study's to retry and report
        return
    if not stored:
        return  # no such study yet
    if space is not None:
        check_fingerprint(cfg, space, stored.get("space_fingerprint"))
    check_fitness_meaning(cfg, stored.get(FITNESS_MEANING) or previous_meaning(cfg))


def shown(value: str) -> str:
    """A setting's JSON text, cut to PREVIEW_CHARS (errors.py) so the message stays one line."""
    return value if len(value) <= PREVIEW_CHARS else value[: PREVIEW_CHARS - 3] + "..."


def previous_meaning(cfg: SearchConfig) -> dict[str, str] | None:
    """The fitness settings of the config.yaml a study from before FITNESS_MEANING was
    started with; None where there is none to read."""
    path = cfg.run_dir / "config.yaml"
    try:
        raw = load_yaml(read_text_file(path, what="run config"), str(path))
    except EvomergeError:
        return None
    return dict(fitness_settings(raw)) if isinstance(raw, dict) else None


def check_fitness_meaning(cfg: SearchConfig, stored: Any) -> None:
    """Refuse to resume a run with another meaning of fitness (task, models, space,
    estimator, seed, evaluator limit and prompts): its trials would be ranked beside ones
    scored differently. One line naming the first key that differs and both values."""
    now = dict(cfg.fitness_meaning)
    if not isinstance(stored, dict) or not now:
        return
    for key in sorted(set(stored) | set(now)):
        was, new = stored.get(key, UNSET), now.get(key, UNSET)
        if was != new:
            raise SearchError(
                f"{key}: run {cfg.run!r} was started with {shown(was)}, this command has "
                f"{shown(new)}; a resumed run keeps what fitness means (task, models, space, "
                "estimator, seed, evaluator limit): set it back, or choose a new run=NAME"
            )


def check_fingerprint(cfg: SearchConfig, space: GenomeSpace, stored: str | None) -> None:
    if stored is not None and stored != space.fingerprint():
        raise SearchError(
            f"run {cfg.run!r}: its study was started with a different search space "
            f"(models, method or layer groups); choose a new run=NAME or delete {cfg.run_dir}"
        )


def seeded(study: optuna.Study) -> bool:
    """Whether the study's creator has seeded it, or begun to (its first enqueued trial), or
    it is under way (a study from before the seeded mark)."""
    return study.user_attrs.get(SEEDED) is not None or bool(study.get_trials(deepcopy=False))


def seed_first_candidates(study: optuna.Study, cfg: SearchConfig, space: GenomeSpace) -> None:
    """Enqueue the uniform merge (the first candidate: the baseline every later one is judged
    by; not for random search), or the grid (space.x0=grid), and the warm starts, then mark
    the study seeded. Points already in the study are skipped, so a second seeding adds
    nothing."""
    points = []
    if getattr(cfg.space, "x0", "uniform") == "grid":  # the grid first; CMA-ES from its best
        points.extend(grid_points(space.genome if isinstance(space, RunSpace) else space))
        study.set_user_attr(GRID_SIZE, len(points))
    elif cfg.optimizer.sampler != "random":
        points.append(dict(zip(space.names, space.x0().tolist(), strict=True)))
    points.extend(cfg.optimizer.warm_start)
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)
    study.set_user_attr(SEEDED, True)


def use_sqlite_wal(url: str) -> None:
    """Put an SQLite study file in write-ahead-log mode (the mode is stored in the file).

    Optuna commits every parameter and attribute on its own: with the default rollback journal
    each commit syncs the database and its journal (7 ms here), in WAL mode only the log (1.3
    ms). Commits stay synced (synchronous=FULL), so a crash loses no finished trial. WAL needs
    the workers on one host and a local filesystem.
    """
    path = url.removeprefix("sqlite:///")
    if path == url or not path or path == ":memory:":
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=120)) as db:
            db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise SearchError(f"storage: cannot open {path}: {e}") from e


def sqlalchemy_url(url: str) -> str:
    """`postgresql://` with the driver that is installed.

    SQLAlchemy 2.1 reads a plain `postgresql://` as psycopg 3; the `distributed` extra installs
    psycopg2 (binary wheels everywhere), so a plain URL names it unless psycopg 3 is present.
    """
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The run's answer: the best primary objective among the trials that satisfy every
    constraint (with one objective and no constraints: the best fitness); ties go to the
    earliest trial, so the uniform merge wins unless something beats it."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return chosen(done, study.directions)
