"""Multi-objective search end to end on the small toy family: the front in summary.json, the
chosen member, export by trial, the report's front, resume with the sources' stored scores."""

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from evomerge.config import compose, dump_config
from evomerge.errors import ConfigError, SearchError
from evomerge.evaluate import EvalSettings, evaluate, load_tasks, make_backend
from evomerge.search.config import search_config
from evomerge.search.export import export_run
from evomerge.search.goals import SOURCE_SCORES
from evomerge.search.loop import run_search
from evomerge.search.pareto import chosen, pareto_front
from evomerge.search.report import write_report
from evomerge_dev.testing import SMALL_SEARCH

MULTI = ["task=toy_mgsm_ja_keep", "optimizer=nsga2"]
FAST = [*SMALL_SEARCH, "heartbeat_s=1", *MULTI]
TESTS = {"toy_mgsm_ja", "toy_math_en", "toy_lang_ja"}


def config(tmp_path: Path, *overrides: str):
    return search_config(compose("search", [*FAST, f"results_dir={tmp_path}", *overrides]))


def load_study(cfg) -> optuna.Study:
    return optuna.load_study(study_name=cfg.run, storage=cfg.storage_url)


@pytest.fixture(scope="module")
def finished(toy_cache, tmp_path_factory):
    """One 8-candidate NSGA-II run with three objectives and two constraints, as the CLI runs
    it (config.yaml beside the study)."""
    tmp = tmp_path_factory.mktemp("multi")
    # a floor that some small-family candidates meet, so the front is of feasible members
    raw = compose(
        "search",
        [
            *FAST,
            f"results_dir={tmp}",
            "run=m",
            "optimizer.n_trials=8",
            "task.constraints.1.min=0.02",
        ],
    )
    cfg = search_config(raw)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(raw))
    return cfg, run_search(cfg, progress=False)


def test_trials_carry_each_objective_and_constraint(finished):
    cfg, summary = finished
    study = load_study(cfg)
    assert [d.name for d in study.directions] == ["MAXIMIZE"] * 3
    scores = study.user_attrs[SOURCE_SCORES]
    assert set(scores) == {"math_en"} and set(scores["math_en"]) == {"toy_math_en_fit"}
    floor = 0.9 * scores["math_en"]["toy_math_en_fit"]["acc"]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert summary["trials"] == len(done) == 8
    for t in done:
        m = t.user_attrs["metrics"]
        assert t.values == [
            m["toy_mgsm_ja_fit"]["acc"],
            m["toy_math_en_fit"]["acc"],
            m["toy_lang_ja_fit"]["acc"],
        ]
        assert t.constraints == pytest.approx(
            {
                "keep_math_en": floor - m["toy_math_en_fit"]["acc"],
                "keep_lang_ja": 0.02 - m["toy_lang_ja_fit"]["acc"],
            }
        )
        assert 0 < m["toy_mgsm_ja_fit"]["gen_tokens"] <= 8


def test_summary_lists_the_front_with_test_scores_and_the_chosen_member(finished):
    cfg, summary = finished
    study = load_study(cfg)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    front = pareto_front(done, study.directions)
    assert [m["trial"] for m in summary["pareto"]] == [t.number for t in front]
    for m, t in zip(summary["pareto"], front, strict=True):
        assert m["objectives"] == dict(zip(["target", "math_en", "lang_ja"], t.values, strict=True))
        assert set(m["test_metrics"]) == TESTS
        assert m["feasible"] == all(v <= 0 for v in t.constraints.values())
    best = chosen(done, study.directions)
    assert summary["best_trial"] == summary["chosen"]["trial"] == best.number
    assert summary["fitness"] == best.values[0]
    assert set(summary["test_metrics"]) == TESTS
    on_disk = json.loads((cfg.run_dir / "summary.json").read_text())
    assert on_disk["pareto"] == summary["pareto"]
    header = (cfg.run_dir / "best_recipe.yaml").read_text().splitlines()[0]
    assert header.startswith(f"# best candidate of this run so far: trial {best.number}, target ")


def test_any_trial_exports_and_scores_as_it_did_in_the_search(finished, tmp_path):
    cfg, summary = finished
    member = summary["pareto"][-1]
    out = export_run(cfg.run_dir, tmp_path / "member", trial=member["trial"])
    settings = EvalSettings(limit=40, batch_size=40)
    tasks = load_tasks(["toy_mgsm_ja_fit", "toy_math_en_fit", "toy_lang_ja_fit"], settings)
    fresh = evaluate(make_backend(out, settings), tasks).results
    assert [fresh[t]["acc"] for t in tasks.names] == list(member["objectives"].values())


@pytest.mark.parametrize(
    ("trial", "message"),
    [("99", r"--trial 99: no such trial in .* \(trials 0\.\.7\)"), ("-1", "--trial -1: no such")],
)
def test_export_of_a_missing_trial_is_one_line_and_writes_nothing(
    finished, tmp_path, trial, message
):
    cfg, _ = finished
    out = tmp_path / "x"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "evomerge",
            "export",
            str(cfg.run_dir),
            "--trial",
            trial,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert re.search(message, proc.stderr), proc.stderr
    assert not out.exists()


def test_the_report_draws_the_front_and_tables_its_members(finished):
    cfg, summary = finished
    write_report(cfg.run_dir)
    assert (cfg.run_dir / "front.png").stat().st_size > 1000
    text = (cfg.run_dir / "report.md").read_text()
    assert "| trial | target | math_en | lang_ja | test |" in text
    rows = [
        line for line in text.splitlines() if line.startswith("| ") and "toy_mgsm_ja 0." in line
    ]
    assert len(rows) == len(summary["pareto"])
    assert f"| {summary['best_trial']} (chosen) |" in text


def test_resume_reuses_the_sources_stored_scores_and_continues(finished, tmp_path):
    cfg = config(tmp_path, "run=r", "optimizer.n_trials=3", "score_test=false")
    run_search(cfg, progress=False)
    study = load_study(cfg)
    stored = study.user_attrs[SOURCE_SCORES]
    fake = {"math_en": {"toy_math_en_fit": {"acc": 0.5}}}  # were they re-scored, 0.5 is gone
    study.set_user_attr(SOURCE_SCORES, fake)
    before = [(t.number, t.params, t.values) for t in study.trials]
    more = config(tmp_path, "run=r", "optimizer.n_trials=5", "score_test=false")
    run_search(more, progress=False)
    trials = load_study(cfg).trials
    assert [(t.number, t.params, t.values) for t in trials[:3]] == before
    assert len(trials) == 5 and stored != fake
    for t in trials[3:]:
        acc = t.user_attrs["metrics"]["toy_math_en_fit"]["acc"]
        assert t.constraints["keep_math_en"] == pytest.approx(0.45 - acc)


def test_a_run_cannot_resume_with_other_objectives(finished, tmp_path):
    run_search(
        config(tmp_path, "run=r", "optimizer.n_trials=1", "score_test=false"), progress=False
    )
    single = search_config(compose("search", [*SMALL_SEARCH, f"results_dir={tmp_path}", "run=r"]))
    # the fitness settings differ first (task.constraints), then the study's directions
    with pytest.raises(SearchError, match=r"task\.constraints: run 'r' was started with"):
        run_search(single, progress=False)


def test_cma_es_refuses_several_objectives(toy_cache, tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer\.sampler: cmaes optimizes one objective"):
        config(tmp_path, "optimizer=cmaes")
