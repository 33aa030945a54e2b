"""`python -m evomerge dashboard RUN` serves the run's study: its trials come back through
optuna-dashboard's JSON API (SQLite, and PostgreSQL where EVOMERGE_TEST_POSTGRES names one)."""

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest

from evomerge.config import compose, dump_config
from evomerge.errors import SearchError
from evomerge.search.dashboard import run_storage
from evomerge.search.study import sqlalchemy_url

pytest.importorskip("optuna_dashboard")

START_S = 60  # the server imports optuna-dashboard and opens the storage first


def _tiny_study(run_dir: Path, storage: str | None) -> optuna.Study:
    run = f"dash-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True)
    config = compose("search", [f"run={run}", *([f"storage={storage}"] if storage else [])])
    (run_dir / "config.yaml").write_text(dump_config(config))
    url = sqlalchemy_url(storage) if storage else f"sqlite:///{run_dir / 'study.db'}"
    study = optuna.create_study(study_name=run, storage=url, direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    for i, value in enumerate([0.2, 0.45, 0.3]):
        trial = optuna.trial.create_trial(
            params={"layers.0.math_en.weight": i / 4},
            distributions={"layers.0.math_en.weight": dist},
            value=value,
            user_attrs={"recipe_sha256": f"h{i}"},
        )
        study.add_trial(trial)
    return study


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _serve(run_dir: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "evomerge", "dashboard", str(run_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()  # printed once the server listens
    if not line:
        server.wait(timeout=START_S)
        pytest.fail(f"dashboard did not start: {server.stderr.read() if server.stderr else ''}")
    return server, line.split(" at ")[1].split("/dashboard")[0]


STORAGES = [None]
if os.environ.get("EVOMERGE_TEST_POSTGRES"):
    STORAGES.append(os.environ["EVOMERGE_TEST_POSTGRES"])


@pytest.mark.parametrize("storage", STORAGES, ids=["sqlite", "postgresql"][: len(STORAGES)])
def test_dashboard_serves_the_runs_trials(tmp_path: Path, storage: str | None) -> None:
    study = _tiny_study(tmp_path / "run", storage)
    server, base = _serve(tmp_path / "run")
    try:
        assert base.startswith("http://127.0.0.1:")
        studies = _get(f"{base}/api/studies")["study_summaries"]
        (ours,) = [s for s in studies if s["study_name"] == study.study_name]
        detail = _get(f"{base}/api/studies/{ours['study_id']}")
        served = {t["number"]: t["values"][0] for t in detail["trials"]}
        assert served == {t.number: t.value for t in study.trials}
        assert detail["best_trials"][0]["number"] == 1
        page = urllib.request.urlopen(f"{base}/dashboard", timeout=10).read()
        assert b"<html" in page.lower()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if storage is not None:
            optuna.delete_study(study_name=study.study_name, storage=sqlalchemy_url(storage))


def test_dashboard_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match=r"no config\.yaml; not a search run directory"):
        run_storage(tmp_path)
    (tmp_path / "config.yaml").write_text(dump_config(compose("search", ["run=r"])))
    with pytest.raises(SearchError, match=r"no study\.db; has the search started"):
        run_storage(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "evomerge", "dashboard", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no study.db" in r.stderr
