"""The exported winner's model card: Hub metadata (base_model, tags) and the search's story."""

import yaml

from evomerge.merge.card import card_metadata, hub_ids, read_front_matter
from evomerge.recipe import load_recipe
from evomerge.search.export import run_card

RECIPE = """
merge_method: ties
base_model: mistralai/Mistral-7B-v0.1
models:
  - {model: org/math-7b, parameters: {weight: 0.6, density: 0.5}}
  - {model: mistralai/Mistral-7B-v0.1+org/ja-lora, parameters: {weight: 0.4, density: 0.7}}
"""
CONFIG = {
    "run": "ja",
    "task": {"name": "mgsm_ja", "fitness": [{"task": "mgsm_ja_fit", "metric": "acc"}]},
    "models": {"base_model": "mistralai/Mistral-7B-v0.1", "sources": {"math": "org/math-7b"}},
    "space": {"kind": "ps", "method": "ties"},
    "optimizer": {"sampler": "cmaes"},
}
SUMMARY = {
    "run": "ja",
    "trials": 1000,
    "failed": 3,
    "best_trial": 812,
    "fitness": 0.5,
    "fitness_metrics": {"mgsm_ja_fit": {"acc": 0.5, "ja": 0.98}},
    "test_metrics": {"mgsm_ja": {"acc": 0.52}},
}


def test_hub_sources_are_the_base_models_of_the_card() -> None:
    card = run_card(load_recipe(RECIPE), CONFIG, SUMMARY)
    meta = read_front_matter(card)
    # a LoRA source names its base and its adapter; each model once, in recipe order
    assert meta["base_model"] == ["mistralai/Mistral-7B-v0.1", "org/math-7b", "org/ja-lora"]
    assert meta["tags"] == ["merge", "evomerge", "ties"]
    assert meta["library_name"] == "transformers"
    assert "candidates evaluated: 1000 (3 failed); best: trial 812" in card
    assert "| fitness | `mgsm_ja_fit` | ja | 0.98 |" in card
    assert "| test (held out) | `mgsm_ja` | acc | 0.52 |" in card
    assert "optimizer `cmaes`" in card and "merge method `ties`" in card


def test_one_hub_model_is_a_string_and_local_paths_are_left_out(tmp_path) -> None:
    assert card_metadata(["org/one", str(tmp_path)], ["linear"])["base_model"] == "org/one"
    assert "base_model" not in card_metadata([str(tmp_path)], ["linear"])
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "local").mkdir()
    assert hub_ids([str(tmp_path / "org" / "local"), "org/x+org/y"]) == ["org/x", "org/y"]


def test_front_matter_is_yaml_the_hub_reads() -> None:
    card = run_card(load_recipe(RECIPE), {}, {})
    block = card.split("---\n")[1]
    assert yaml.safe_load(block) == read_front_matter(card)
    assert card.startswith("---\nbase_model:\n")
