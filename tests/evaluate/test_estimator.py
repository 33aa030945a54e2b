"""Fitness estimators: per-item results, subsets, the IRT fit and its estimate, racing bounds."""

import dataclasses

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.evaluate import EvalSettings, evaluate, load_tasks, make_backend
from evomerge.evaluate.estimator import (
    EstimatorSpec,
    ItemPlan,
    binary_strings,
    combine,
    estimate_results,
    fitted_plan,
    random_plan,
    upper_bound,
)
from evomerge.evaluate.irt import (
    ItemModel,
    estimate,
    estimates,
    fit_2pl,
    fit_item_model,
    shrunk_mix,
    strata_anchors,
)
from evomerge.evaluate.objectives import GEN_TOKENS, parse_terms
from evomerge_dev.stats import spearman

FIT = "toy_mgsm_ja_fit"
OBJECTIVE = parse_terms([{"task": FIT, "metric": "ja"}], "task.fitness")
SETTINGS = EvalSettings(limit=40, batch_size=40)


@pytest.fixture(scope="module")
def scored(toy_cache):
    """The small toy's language specialist, evaluated on 40 fitness documents."""
    from evomerge.toy import ensure_family

    family = ensure_family("small", cache_dir=toy_cache)
    backend = make_backend(str(family.path("lang_ja")), SETTINGS)
    tasks = load_tasks([FIT], SETTINGS)
    return backend, tasks, evaluate(backend, tasks)


def test_a_subset_generates_only_its_documents_and_scores_them_as_the_full_pass(scored):
    backend, tasks, full = scored
    assert full.item_ids[FIT] == list(range(40)) and full.items == 40 and full.tokens > 0
    only = [3, 17, 5, 30]
    sub = evaluate(backend, tasks, only={FIT: only})
    assert sorted(sub.item_ids[FIT]) == sorted(only) and sub.items == 4
    assert 0 < sub.tokens < full.tokens
    for key, values in sub.item_values[FIT].items():
        by_doc = dict(zip(full.item_ids[FIT], full.item_values[FIT][key], strict=True))
        mine = dict(zip(sub.item_ids[FIT], values, strict=True))
        assert mine == {i: by_doc[i] for i in only}  # the same answers as in the full pass
        assert sub.results[FIT][key.partition(",")[0]] == pytest.approx(np.mean(values))


def test_chunks_combined_give_the_full_pass(scored):
    backend, tasks, full = scored
    chunks = [evaluate(backend, tasks, only={FIT: list(range(s, s + 10))}) for s in (0, 10, 20, 30)]
    joined = combine(chunks)
    assert joined.items == 40 and joined.tokens == full.tokens
    for name, value in full.results[FIT].items():
        assert joined.results[FIT][name] == pytest.approx(value), name
    assert GEN_TOKENS in joined.results[FIT]


def test_binary_strings_follow_the_universe_order(scored):
    _, _, full = scored
    plan = random_plan({FIT: list(range(40))}, n=10, seed=0)
    bits = binary_strings(full, OBJECTIVE, plan)[f"{FIT}/ja"]
    values = dict(zip(full.item_ids[FIT], full.item_values[FIT]["ja,none"], strict=True))
    assert bits == "".join("1" if values[i] == 1.0 else "0" for i in range(40))
    assert len(bits) == 40


def test_a_random_plan_is_seeded_and_round_trips():
    universe = {FIT: list(range(100, 800))}
    a, b = random_plan(universe, 70, seed=3), random_plan(universe, 70, seed=3)
    assert a == b and len(set(a.items[FIT])) == 70 and set(a.items[FIT]) <= set(universe[FIT])
    assert random_plan(universe, 70, seed=4).items != a.items
    assert ItemPlan.from_json(a.to_json()) == a and a.digest() == b.digest()


def simulated(seed: int, k: int, n_items: int = 700, mean: float = -0.5, sd: float = 1.0):
    """0/1 answers of k candidates (abilities N(mean, sd) drawn with `seed`) to the same
    items of a 2PL model."""
    items = np.random.default_rng(n_items)
    a = np.exp(items.normal(0, 0.7, n_items))
    b = items.normal(0, 1.5, n_items)
    rng = np.random.default_rng(seed)
    theta = rng.normal(mean, sd, k)
    p = 1 / (1 + np.exp(-a * (theta[:, None] - b)))
    return (rng.random(p.shape) < p).astype(float)


def quality(model: ItemModel, y: np.ndarray) -> tuple[float, float]:
    est = np.array([estimate(model, row[model.anchors]) for row in y])
    truth = y.mean(1)
    return spearman(est, truth), float(np.abs(est - truth).mean())


def test_irt_estimates_rank_and_score_new_candidates_better_than_a_random_subset():
    model = fit_item_model(simulated(0, k=30), n=70, seed=0)
    assert len(model.anchors) == 70 and model.weights.sum() == pytest.approx(1.0)
    assert 0.0 <= model.mix <= 1.0 and model.band[0] < model.band[1]
    y = simulated(1, k=200)
    rho, irt_mae = quality(model, y)
    subset = y[:, np.random.default_rng(0).permutation(700)[:70]].mean(1)
    subset_mae = np.abs(subset - y.mean(1)).mean()
    assert rho > 0.95
    assert irt_mae < 0.04 and irt_mae < subset_mae


def test_the_discrimination_prior_keeps_a_narrow_calibration_from_steep_item_curves():
    narrow = simulated(5, k=10, mean=0.0, sd=0.1)  # one generation near the start
    _, loose, _ = fit_2pl(narrow, log_a_sd=2.0)
    _, tight, _ = fit_2pl(narrow)
    _, rasch, _ = fit_2pl(narrow, model="1pl")
    assert np.allclose(rasch, 1.0)
    assert tight.max() < loose.max() and tight.max() < 3.0


def test_the_mix_shrinks_to_the_anchor_mean_outside_the_calibration_band():
    assert shrunk_mix(0.2, 0.0, (-1.0, 1.0)) == 0.2
    assert shrunk_mix(0.2, 1.5, (-1.0, 1.0)) == pytest.approx(0.6)
    assert shrunk_mix(0.2, -9.0, (-1.0, 1.0)) == 1.0
    model = fit_item_model(simulated(5, k=10, mean=0.0, sd=0.1), n=35, seed=0)
    far = simulated(6, k=1, mean=4.0, sd=0.01)[0]  # far above every calibration candidate
    z_a, _, theta = estimates(far[model.anchors], model.a, model.b, model.anchors, model.weights)
    assert theta > model.band[1] + 1.0
    assert estimate(model, far[model.anchors]) == pytest.approx(z_a)


def test_the_guards_cut_the_error_of_a_narrow_calibration_on_a_wide_population():
    # The failure they guard against: a calibration of one generation near x0 (abilities
    # within +-0.1), then candidates across the whole range. Unguarded: the former wide
    # discrimination prior and no shrinking of the mix.
    calibration = simulated(7, k=10, mean=0.0, sd=0.1)
    y = simulated(8, k=200, mean=-0.5, sd=1.5)
    guarded = fit_item_model(calibration, n=70, seed=0)
    loose = fit_item_model(calibration, n=70, seed=0, log_a_sd=1.0)
    _, unguarded_mae = quality(dataclasses.replace(loose, band=(-np.inf, np.inf)), y)
    rho, mae = quality(guarded, y)
    assert rho > 0.95 and mae < 0.055 and mae < 0.75 * unguarded_mae, (rho, mae, unguarded_mae)


def test_a_weak_calibration_that_solves_few_items_still_beats_a_random_subset():
    # The toy's case: one early generation leaves a third of the items unsolved; the
    # candidates estimated later are better. Strata anchors keep those items from sharing one
    # anchor, and the mix is priced on the stronger calibration half.
    calibration = simulated(11, k=10, mean=-1.8, sd=0.3)
    assert (calibration.sum(0) == 0).sum() > 150
    y = simulated(12, k=200, mean=-0.8, sd=0.6)
    rho, mae = quality(fit_item_model(calibration, n=70, seed=0), y)
    subset = y[:, np.random.default_rng(0).permutation(700)[:70]].mean(1)
    assert rho > 0.85 and mae < 0.8 * np.abs(subset - y.mean(1)).mean(), (rho, mae)


def test_irt_plan_round_trips_and_the_same_rows_fit_the_same_plan():
    y = simulated(2, k=12, n_items=60)
    rows = [{f"{FIT}/ja": "".join("1" if v else "0" for v in r)} for r in y]
    spec = EstimatorSpec(kind="irt", n=10)
    universe = {FIT: list(range(60))}
    plan = fitted_plan(spec, universe, OBJECTIVE, rows)
    assert fitted_plan(spec, universe, OBJECTIVE, rows).digest() == plan.digest()
    back = ItemPlan.from_json(plan.to_json())
    assert back.digest() == plan.digest() and len(back.items[FIT]) == 10
    assert back.models[f"{FIT}/ja"].band == plan.models[f"{FIT}/ja"].band


def test_a_redrawn_plan_is_a_seeded_new_draw_of_the_same_size_and_the_same_fit():
    universe = {FIT: list(range(100, 400))}
    subset = random_plan(universe, 20, seed=0)
    one, two = subset.redrawn(1, seed=0), subset.redrawn(2, seed=0)
    assert one.digest() == subset.redrawn(1, seed=0).digest()  # a function of draw and seed
    assert one.items != two.items and one.items != subset.items
    assert one.items != subset.redrawn(1, seed=5).items
    assert len(one.items[FIT]) == 20 and set(one.items[FIT]) <= set(universe[FIT])
    assert one.universe == subset.universe and one.kind == "subset"

    y = simulated(4, k=12, n_items=300)
    rows = [{f"{FIT}/ja": "".join("1" if v else "0" for v in r)} for r in y]
    plan = fitted_plan(EstimatorSpec(kind="irt", n=30), universe, OBJECTIVE, rows)
    key = f"{FIT}/ja"
    fitted, drawn = plan.models[key], plan.redrawn(3, seed=0)
    model = drawn.models[key]
    # the same item model and mix, other anchors: one from each difficulty stratum again
    assert (model.a == fitted.a).all() and (model.b == fitted.b).all()
    assert (model.mix, model.band) == (fitted.mix, fitted.band)
    assert model.anchors.tolist() != fitted.anchors.tolist()
    assert model.weights.sum() == pytest.approx(1.0) and len(model.anchors) == 30
    strata = np.array_split(np.sort(fitted.b), 30)  # equal strata in difficulty order
    drawn_b = np.sort(fitted.b[model.anchors])
    assert all(s.min() <= v <= s.max() for s, v in zip(strata, drawn_b, strict=True))
    assert drawn.items[FIT] == sorted(universe[FIT][i] for i in model.anchors)
    assert ItemPlan.from_json(drawn.to_json()).digest() == drawn.digest()


def test_redrawing_applies_to_irt_and_random_subsets_only():
    EstimatorSpec(kind="irt", redraw="generation")
    EstimatorSpec(kind="subset", redraw="generation")
    with pytest.raises(ConfigError, match=r"estimator\.redraw: must be one of"):
        EstimatorSpec(kind="irt", redraw="trial")
    for kind, select in (("full", "random"), ("subset", "stratified")):
        with pytest.raises(
            ConfigError, match=rf"estimator\.redraw: .*kind={kind}, select={select}"
        ):
            EstimatorSpec(kind=kind, select=select, redraw="generation")


def test_anchors_take_one_item_from_each_difficulty_stratum_even_where_items_tie():
    b = np.concatenate([np.full(60, 4.0), np.linspace(-2, 2, 40)])  # 60 items none solved
    anchors, weights = strata_anchors(b, 10, seed=0)
    assert len(set(anchors.tolist())) == 10 and weights == pytest.approx(np.full(10, 0.1))
    # 6 of 10 strata are the tied hardest items, each its own anchor with its own share
    assert sum(b[anchors] == 4.0) == 6
    assert sorted(b[anchors][:4]) == list(b[anchors][:4])  # strata in difficulty order
    assert strata_anchors(b, 10, seed=1)[0].tolist() != anchors.tolist()  # seeded draws


def test_stratified_subset_takes_one_item_per_difficulty_stratum():
    y = simulated(3, k=10, n_items=100)
    rows = [{f"{FIT}/ja": "".join("1" if v else "0" for v in r)} for r in y]
    spec = EstimatorSpec(kind="subset", select="stratified", n=10)
    plan = fitted_plan(spec, {FIT: list(range(100))}, OBJECTIVE, rows)
    order = np.argsort(y.mean(0), kind="stable")
    strata = [set(s.tolist()) for s in np.array_split(order, 10)]
    assert all(len(strata[k] & set(plan.items[FIT])) == 1 for k in range(10))


def test_estimate_results_replace_only_the_objective_metric(scored):
    _, _, full = scored
    rows = [
        {f"{FIT}/ja": "".join("1" if (i * 7 + j) % (3 + i) else "0" for j in range(40))}
        for i in range(6)
    ]
    plan = fitted_plan(EstimatorSpec(kind="irt", n=8), {FIT: list(range(40))}, OBJECTIVE, rows)
    out = estimate_results(plan, full, OBJECTIVE)
    model = plan.models[f"{FIT}/ja"]
    values = dict(zip(full.item_ids[FIT], full.item_values[FIT]["ja,none"], strict=True))
    assert out[FIT]["ja"] == estimate(model, np.array([values[i] for i in model.anchors]))
    assert out[FIT]["acc"] == full.results[FIT]["acc"]


def test_upper_bound_is_exact_when_every_item_is_seen_and_shrinks_with_more_items():
    assert upper_bound(14, 70, 70, 1.96) == pytest.approx(0.2)
    wide, narrow = upper_bound(7, 35, 700, 1.96), upper_bound(70, 350, 700, 1.96)
    assert wide > narrow > 0.2  # the same share, a tighter bound with ten times the items
    assert upper_bound(0, 35, 700, 1.96) > 0  # 0 of 35 is not a certain 0


def test_estimator_spec_rejects_bad_values_naming_the_key():
    with pytest.raises(ConfigError, match=r"estimator\.kind: must be one of"):
        EstimatorSpec(kind="tiny")
    with pytest.raises(ConfigError, match=r"estimator\.n: must be >= 2, got 1"):
        EstimatorSpec(kind="irt", n=1)
    with pytest.raises(ConfigError, match=r"estimator\.model: must be one of"):
        EstimatorSpec(kind="irt", model="3pl")
