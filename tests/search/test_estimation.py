"""Estimators inside the search (small toy): calibration, stored plan, resume, another worker,
racing, accounting, the winner re-scored in full; the ledger's counts; the grid warm start."""

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from evomerge.__main__ import main
from evomerge.config import compose
from evomerge.errors import ConfigError
from evomerge.evaluate.estimator import ItemPlan
from evomerge.search.budget import Ledger, budget_held, trials_done
from evomerge.search.config import search_config
from evomerge.search.loop import make_scorer, run_search
from evomerge.search.report import generation_cost, summary_markdown
from evomerge.search.scoring_policy import PLAN_ATTR, RESCORED, WINNER, Estimation, stops
from evomerge.search.space import build_space
from evomerge.search.study import best_trial
from evomerge.search.trial_record import BITS, FAILURE
from evomerge.search.warmstart import GRID_SIZE, GRID_X0, grid_points
from evomerge_dev.testing import SMALL_SEARCH

FIT = "toy_mgsm_ja_fit"
# `ja` (answered in kanji) spreads the small toy's candidates; its `acc` is near 0 for all.
JA = f"task.fitness=[{{task:{FIT},metric:ja,weight:1.0}}]"


def config(tmp_path, *overrides):
    return search_config(
        compose(
            "search", [*SMALL_SEARCH, "heartbeat_s=1", JA, f"results_dir={tmp_path}", *overrides]
        )
    )


def trials_of(cfg):
    study = optuna.load_study(study_name=cfg.run, storage=cfg.storage_url)
    return study, study.get_trials(states=(TrialState.COMPLETE,))


def test_irt_calibrates_on_the_first_generation_then_generates_only_anchors(toy_cache, tmp_path):
    irt = ("run=irt", "estimator=irt", "estimator.n=8", "estimator.redraw=none")
    cfg = config(tmp_path, *irt, "optimizer.n_trials=8")
    summary = run_search(cfg, progress=False)
    study, trials = trials_of(cfg)
    first, later = trials[:4], trials[4:]  # population_size=4: one generation in full
    assert all(not t.user_attrs["estimated"] and t.user_attrs["items"] == 40 for t in first)
    assert all(len(t.user_attrs[BITS][f"{FIT}/ja"]) == 40 for t in first)
    assert all(t.user_attrs["estimated"] and t.user_attrs["items"] == 8 for t in later)
    assert all(BITS not in t.user_attrs for t in later)
    assert all(t.user_attrs["tokens"] > 0 for t in trials)
    plan = ItemPlan.from_json(study.user_attrs[PLAN_ATTR])
    assert plan.kind == "irt" and len(plan.items[FIT]) == 8
    on_disk = json.loads((cfg.run_dir / "estimator_plan.json").read_text())
    assert ItemPlan.from_json(on_disk).digest() == plan.digest()
    # accounting: every trial's items, and the winner's fitness is a full-split score
    assert (
        summary["items_generated"] == sum(t.user_attrs["items"] for t in trials) == 4 * 40 + 4 * 8
    )
    assert summary["estimator"] == "irt" and summary["tokens_generated"] > 0
    winner = study.trials[summary["best_trial"]]
    if winner.user_attrs["estimated"]:
        kept = study.user_attrs[RESCORED][str(winner.number)]
        assert summary["fitness"] == kept["fitness"] and kept["items"] == 40
    else:
        assert summary["fitness"] == winner.value
    top = sorted(trials, key=lambda t: (-t.value, t.number))[:5]  # estimator.rescore_top
    assert summary["items_rescored"] == 40 * sum(t.user_attrs["estimated"] for t in top)
    assert summary["test_metrics"]["toy_mgsm_ja"]
    report = "\n".join(generation_cost(study.get_trials(), study))
    assert f"generation cost: {4 * 40 + 4 * 8} fitness documents" in report
    assert "(4 estimated, 0 stopped early by racing)" in report

    # a resumed search (and any other worker) uses the stored plan, and fits none
    study.set_user_attr(PLAN_ATTR, {**plan.to_json(), "items": {FIT: [0, 1]}})
    again = config(tmp_path, *irt, "optimizer.n_trials=10")
    run_search(again, progress=False)
    _, trials = trials_of(again)
    assert [t.user_attrs["items"] for t in trials[8:]] == [2, 2]
    assert len([t for t in trials if not t.user_attrs["estimated"]]) == 4  # no new calibration
    no_scorer = None  # the stored plan is read, nothing is fitted or generated
    other = Estimation(again.estimator, again.task.objective, no_scorer, again.run_dir, 4)  # type: ignore[arg-type]
    assert other.plan(study).items == {FIT: [0, 1]}


def test_the_full_estimator_records_items_and_no_plan(toy_cache, tmp_path):
    cfg = config(tmp_path, "run=full", "optimizer.n_trials=4")
    summary = run_search(cfg, progress=False)
    study, trials = trials_of(cfg)
    assert all(t.user_attrs["items"] == 40 and not t.user_attrs["estimated"] for t in trials)
    assert summary["items_generated"] == 160 and summary["items_rescored"] == 0
    assert summary["fitness"] == summary["best_estimate"] == max(t.value for t in trials)
    assert PLAN_ATTR not in study.user_attrs and RESCORED not in study.user_attrs


def test_a_subset_search_generates_its_subset_and_rescores_the_winner(toy_cache, tmp_path):
    cfg = config(tmp_path, "run=sub", "estimator=subset", "estimator.n=10", "optimizer.n_trials=5")
    summary = run_search(cfg, progress=False)
    study, trials = trials_of(cfg)
    assert all(t.user_attrs["items"] == 10 and t.user_attrs["estimated"] for t in trials)
    winner = study.trials[summary["best_trial"]]
    assert summary["fitness"] == study.user_attrs[RESCORED][str(winner.number)]["fitness"]
    assert summary["best_estimate"] == winner.value
    assert summary["items_rescored"] == 40 * min(5, len(trials))
    header = (cfg.run_dir / "best_recipe.yaml").read_text().splitlines()[0]
    assert f"fitness {summary['fitness']!r} (estimate: fitness" in header
    assert study.user_attrs[WINNER] == {"trial": winner.number, "fitness": summary["fitness"]}
    report = summary_markdown(cfg.run_dir, study)
    full = f"fitness {summary['fitness']:.4f} on the full split"
    assert f"- best: trial {winner.number}, {full} (estimate {winner.value:.4f})" in report


def test_redraw_gives_each_generation_its_own_documents(toy_cache, tmp_path, monkeypatch):
    import evomerge.search.scorer as scorer

    generated = []  # the documents each candidate generated, in order

    def recording(backend, tasks, only=None):
        generated.append(None if only is None else tuple(sorted(only[FIT])))  # None: in full
        return evaluate(backend, tasks, only=only)

    evaluate = scorer.evaluate
    monkeypatch.setattr(scorer, "evaluate", recording)
    sub = ("estimator=subset", "estimator.n=10", "estimator.redraw=generation")
    cfg = config(tmp_path, "run=redraw", *sub, "optimizer.n_trials=13")
    run_search(cfg, progress=False)
    study, trials = trials_of(cfg)
    draws = [t.user_attrs["draw"] for t in trials]
    # trial 0 is CMA-ES's independent first sample; then generations of population_size=4
    assert draws == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert [t.system_attrs.get("cma:generation", 0) for t in trials] == draws
    docs = generated[: len(trials)]  # then the finalists, re-scored in full
    assert all(len(d) == 10 for d in docs)
    by_draw = {d: {docs[i] for i, x in enumerate(draws) if x == d} for d in set(draws)}
    assert all(len(v) == 1 for v in by_draw.values())  # a generation shares its documents
    assert len({next(iter(v)) for v in by_draw.values()}) == 3  # each generation its own
    plan = ItemPlan.from_json(study.user_attrs[PLAN_ATTR])
    assert docs[5] == tuple(sorted(plan.redrawn(1, cfg.estimator.seed).items[FIT]))
    # resumed, the next generation draws as the same run would have
    again = config(tmp_path, "run=redraw", *sub, "optimizer.n_trials=15")
    run_search(again, progress=False)
    _, trials = trials_of(again)
    assert [t.user_attrs["draw"] for t in trials[13:]] == [3, 3]


def test_racing_stops_weak_candidates_and_records_their_items(toy_cache, tmp_path):
    cfg = config(
        tmp_path,
        "run=race",
        "estimator.race=true",
        "estimator.chunk=10",
        "optimizer.n_trials=14",
        "optimizer.sigma0=0.5",  # a wide spread: some candidates far below the median
    )
    run_search(cfg, progress=False)
    _, trials = trials_of(cfg)
    raced = [t for t in trials if t.user_attrs.get("raced")]
    assert raced, "no candidate was stopped"
    for t in raced:
        assert t.user_attrs["estimated"] and t.user_attrs["items"] in (10, 20, 30)
    assert all(t.user_attrs["items"] == 40 for t in trials if not t.user_attrs.get("raced"))


def test_racing_decisions():
    # 0 of 35 of 700: the bound is far below a median of 0.4: stop
    assert stops(0, 35, 700, 0.4, 1.96)
    # 12 of 35 (34%): could still reach 0.4: go on
    assert not stops(12, 35, 700, 0.4, 1.96)
    # after every item there is nothing left to stop
    assert not stops(0, 700, 700, 0.4, 1.96)
    # a higher z stops later
    assert stops(8, 35, 700, 0.4, 1.0) and not stops(8, 35, 700, 0.4, 3.0)


OBJECTIVES = "task=toy_mgsm_ja_keep"  # several objectives and constraints


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            (
                "estimator.race=true",
                f"task.fitness=[{{task:{FIT},metric:ja}},{{task:{FIT},metric:acc}}]",
            ),
            "estimator.race: needs a fitness of one term with a positive weight",
        ),
        (
            ("estimator=irt", OBJECTIVES, "optimizer=nsga2"),
            "estimator.kind: irt estimates one fitness",
        ),
        (("estimator.race=true", OBJECTIVES, "optimizer=nsga2"), "estimator.race: true estimates"),
        (("estimator.n=1",), "estimator.n: must be >= 2, got 1"),
        (("estimator.race=maybe",), "estimator.race: must be true or false, got 'maybe'"),
        (("+estimator.anchors=3",), "estimator: unknown key(s) ['anchors']"),
        (("space.x0=best",), "space.x0: must be one of ('uniform', 'grid'), got 'best'"),
        (("space=dfs", "+space.x0=grid"), "space (dfs): unknown key(s) ['x0']"),
    ],
)
def test_bad_estimator_settings_are_one_line_errors_and_write_nothing(
    tmp_path, capsys, overrides, message
):
    args = ["search", f"results_dir={tmp_path}", "run=r", *SMALL_SEARCH, *overrides]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_several_objectives_run_with_the_full_estimator(tmp_path):
    def composed(*overrides):
        return search_config(compose("search", [OBJECTIVES, "optimizer=nsga2", *overrides]))

    cfg = composed()
    assert len(cfg.task.goals.goals) > 1 and cfg.estimator.kind == "full"
    with pytest.raises(ConfigError, match=r"estimator\.kind: subset estimates one fitness"):
        composed("estimator=subset")


def test_the_ledger_counts_as_the_study_reads(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'l.db'}", direction="maximize")
    ledger = Ledger(study, window=3)

    def add(state, value=None, **attrs):
        t = study.ask()
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        if state is not TrialState.RUNNING:
            study.tell(t, value if state == TrialState.COMPLETE else None, state=state)
        return t

    add(TrialState.COMPLETE, 0.3, items=70, tokens=5)
    add(TrialState.FAIL, **{FAILURE: "nan: x", "items": 70})
    add(TrialState.FAIL)  # a worker's lost trial: no budget
    running = add(TrialState.RUNNING)
    add(TrialState.PRUNED)
    study.enqueue_trial({})  # WAITING, then taken by the next ask
    tie = [add(TrialState.COMPLETE, 0.5, items=7).number for _ in range(2)]
    study.enqueue_trial({})  # WAITING
    for _ in range(2):  # the same counts read once or refreshed again
        ledger.refresh()
        assert ledger.done == trials_done(study) == 4
        assert ledger.held() == budget_held(study)
        for before in range(10):
            assert ledger.held(before) == budget_held(study, before), before
        assert ledger.best.number == best_trial(study).number == tie[0]  # ties: the earlier
        assert ledger.items == 70 + 70 + 7 + 7 and ledger.tokens == 5 and ledger.failed == 1
        assert ledger.median() == 0.5 and ledger.last_complete.number == tie[1]
        assert [t.number for t in ledger.running()] == [running.number]
    study.tell(running, 0.9)
    ledger.refresh()
    assert ledger.best.number == running.number and ledger.done == trials_done(study) == 5
    assert ledger.running() == []


def test_the_ledger_picks_the_best_as_the_study_does_with_two_objectives(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.3, 5.0], [0.5, 9.0], [0.5, 4.0], [0.1, 1.0]):
        study.tell(study.ask(), values)
    ledger = Ledger(study).refresh()
    assert ledger.best.number == best_trial(study).number == 2


def test_grid_points_are_uniform_merges_of_the_space(toy_cache, tmp_path):
    space = build_space(config(tmp_path))
    points = grid_points(space.genome)
    assert len(points) == 3 * 3 * 2  # weights per source (2 sources), densities
    seen = set()
    for p in points:
        recipe = space.decode(np.array([p[n] for n in space.names]))
        key = []
        for m in recipe.models:
            weights = {c.value for c in m.parameters["weight"]}
            densities = {c.value for c in m.parameters["density"]}
            assert len(weights) == 1 and weights <= {0.5, 1.0, 1.5}
            assert len(densities) == 1 and densities <= {0.5, 1.0}
            key.append((*weights, *densities))
        seen.add(tuple(key))
    assert len(seen) == 18


def test_x0_grid_scores_the_grid_then_starts_cmaes_at_its_best(toy_cache, tmp_path):
    cfg = config(tmp_path, "run=g", "space.x0=grid", "estimator=irt", "optimizer.n_trials=22")
    run_search(cfg, progress=False)
    study, trials = trials_of(cfg)
    size = study.user_attrs[GRID_SIZE]
    assert size == 18
    grid = [t for t in trials if t.number < size]
    best = max(grid, key=lambda t: (t.value, -t.number))
    assert study.user_attrs[GRID_X0] == best.params
    later = [t for t in trials if t.number >= size]
    assert len(later) == 4 and all("cma:generation" in str(t.system_attrs) for t in later)
    assert not any("cma" in str(t.system_attrs) for t in grid)
    # the grid is the irt calibration (a spread of candidates), scored in full
    assert all(not t.user_attrs["estimated"] for t in grid)
    assert all(t.user_attrs["estimated"] for t in later)
    # the first generation is drawn around the grid's best (sigma0 0.15 in box units)
    x_best = np.array([best.params[n] for n in study.user_attrs["space_names"]])
    for t in later:
        x = np.array([t.params[n] for n in study.user_attrs["space_names"]])
        assert np.abs(x - x_best).mean() < 0.2


def test_the_universe_is_every_fitness_document(toy_cache, tmp_path):
    cfg = config(tmp_path)
    space = build_space(cfg)
    scorer = make_scorer(
        space.template_model, cfg.evaluator, cfg.task, merge_on=cfg.merge_on, seed=cfg.seed
    )
    est = Estimation(cfg.estimator, cfg.task.objective, scorer, tmp_path, 4)
    assert est.universe() == {FIT: list(range(40))}
