"""DFS and PS+DFS searches end to end on the small toy family: a few trials each."""

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from evomerge.config import compose
from evomerge.errors import ConfigError
from evomerge.evaluate import EvalSettings, evaluate, fitness, load_tasks, make_backend
from evomerge.genome.dfs import DFSSpace
from evomerge.genome.ps import PSSpace
from evomerge.merge import merge_to_disk
from evomerge.merge.multistage import load_stages, merge_recipe_file
from evomerge.model_ref import resolve_reference
from evomerge.recipe import dump_recipe, load_recipe
from evomerge.search.config import search_config
from evomerge.search.loop import run_search
from evomerge.search.space import build_space
from evomerge.search.trial_record import FAILURE
from evomerge_dev.testing import SMALL_SEARCH

FAST = [
    *SMALL_SEARCH,
    "space.scaling=model_pair",
]


def config(tmp_path: Path, *overrides: str):
    return search_config(compose("search", [*FAST, f"results_dir={tmp_path}", *overrides]))


def completed(cfg) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=cfg.run, storage=cfg.storage_url)
    return study.get_trials(states=(TrialState.COMPLETE,))


def test_dfs_search_exports_a_path_that_scores_the_same_on_disk(toy_cache, tmp_path):
    cfg = config(tmp_path, "space=dfs", "run=d", "optimizer.n_trials=5")
    space = build_space(cfg).genome
    assert isinstance(space, DFSSpace) and space.model_names == ("math_en", "lang_ja")
    summary = run_search(cfg, progress=False)
    trials = completed(cfg)
    assert summary["trials"] == len(trials) == 5
    assert set(summary["test_metrics"]) == {"toy_mgsm_ja"}
    best = max(trials, key=lambda t: (t.value, -t.number))
    recipe = load_recipe(cfg.run_dir / "best_recipe.yaml")
    assert recipe.merge_method == "passthrough"
    out = merge_to_disk(recipe, tmp_path / "merged")
    settings = EvalSettings(limit=40, batch_size=40)
    fresh = evaluate(make_backend(out, settings), load_tasks(["toy_mgsm_ja_fit"], settings))
    assert fitness(fresh.results, cfg.task.objective) == best.value
    # the same command resumes: more trials, none repeated
    more = config(tmp_path, "space=dfs", "run=d", "optimizer.n_trials=7")
    assert run_search(more, progress=False)["trials"] == 7


def test_an_empty_path_is_a_failed_trial_and_the_search_goes_on(toy_cache, tmp_path):
    cfg = config(tmp_path, "space=dfs", "run=e", "optimizer.n_trials=2")
    empty = {n: (0.1 if n.startswith("slot.") else 0.5) for n in build_space(cfg).names}
    cfg = replace(cfg, optimizer=replace(cfg.optimizer, warm_start=(empty,)))
    run_search(cfg, progress=False)
    study = optuna.load_study(study_name=cfg.run, storage=cfg.storage_url)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "genome: empty path" in failed[0].user_attrs[FAILURE]


def test_ps_dfs_uses_the_ps_result_as_the_first_source(toy_cache, tmp_path):
    base = resolve_reference("toy:base", "small")
    models = tuple(resolve_reference(f"toy:{n}", "small") for n in ("math_en", "lang_ja"))
    ps = PSSpace(base, models, ("math_en", "lang_ja"), num_layers=2)
    ps_file = tmp_path / "ps_best.yaml"
    ps_file.write_text(dump_recipe(ps.decode(ps.x0())))
    args = ("space=ps_dfs", "run=pd", f"space.ps_recipe={ps_file}")
    cfg = config(tmp_path, *args, "optimizer.n_trials=3")
    run_search(cfg, progress=False)
    space = build_space(cfg).genome
    assert isinstance(space, DFSSpace) and space.model_names == ("ps", "lang_ja")
    assert Path(space.models[0]) == (cfg.run_dir / "ps_model").resolve()
    assert len(completed(cfg)) == 3
    recipe = load_recipe(cfg.run_dir / "best_recipe.yaml")
    assert recipe.slices[0].sources[0].model == space.models[0]
    # the standalone file re-merges the PS stage from the sources: same checkpoint, no ps_model
    stages = load_stages(cfg.run_dir / "best_recipe_standalone.yaml")
    assert [s.name for s in stages] == ["ps_model", None]
    assert stages[0].recipe == load_recipe(ps_file)
    assert stages[1].recipe.slices[0].sources[0].model == "ps_model"
    alone = merge_recipe_file(cfg.run_dir / "best_recipe_standalone.yaml", tmp_path / "alone")
    plain = merge_to_disk(recipe, tmp_path / "plain")
    a, b = (load_file(d / "model.safetensors") for d in (alone, plain))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a different PS recipe cannot silently reuse the materialized PS model
    other = tmp_path / "other.yaml"
    other.write_text(dump_recipe(ps.decode(ps.x0() * 0.5)))
    with pytest.raises(ConfigError, match="merged from a different PS recipe"):
        build_space(config(tmp_path, "space=ps_dfs", "run=pd", f"space.ps_recipe={other}"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["space=dfs", "space.sources=[nope]"], r"space.sources: \['nope'\] not among"),
        (["space=dfs", "space.repeats=0"], "space.repeats: must be >= 1"),
        (["space=dfs", "+space.density_range=[0,1]"], "unknown key"),
        (["space=ps_dfs", "space.ps_recipe=no-such-run"], "run the PS search first"),
        (["space=ps_dfs", "space.ps_recipe=null"], "give the PS result"),
    ],
)
def test_bad_dfs_configuration_is_reported_with_its_key(toy_cache, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_space(config(tmp_path, *overrides))
