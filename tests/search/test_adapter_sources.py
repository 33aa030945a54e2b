"""The search takes LoRA adapters as sources (`BASE+ADAPTER` in models.sources)."""

from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from evomerge.config import compose
from evomerge.merge import merge_to_disk
from evomerge.recipe import load_recipe
from evomerge.search.config import search_config
from evomerge.search.loop import run_search
from evomerge_dev.testing import SMALL_SEARCH, make_tiny_lora

pytest.importorskip("peft")


def test_search_with_an_adapter_source(toy_cache: Path, tmp_path: Path) -> None:
    from evomerge.toy import ensure_family

    family = ensure_family(size="small", cache_dir=toy_cache)
    adapter = make_tiny_lora(tmp_path / "ad", family.base, seed=1, target_modules=("q_proj",))
    cfg = search_config(
        compose(
            "search",
            [
                *SMALL_SEARCH,
                f"results_dir={tmp_path}",
                "run=lora",
                "optimizer.n_trials=2",
                f"+models.sources.lang_ja_lora='toy:base+{adapter}'",
            ],
        )
    )
    summary = run_search(cfg, progress=False)
    study = optuna.load_study(study_name=cfg.run, storage=cfg.storage_url)
    assert summary["trials"] == len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    recipe = load_recipe(cfg.run_dir / "best_recipe.yaml")
    refs = [m.model for m in recipe.models]
    assert f"{family.base}+{adapter}" in refs
    # the exported recipe merges on disk: the adapter's update reaches the merged q_proj
    merged = load_file(merge_to_disk(recipe, tmp_path / "out") / "model.safetensors")
    text = (cfg.run_dir / "best_recipe.yaml").read_text().replace(f"+{adapter}", "")
    bare = load_file(merge_to_disk(load_recipe(text), tmp_path / "bare") / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], bare[name])
