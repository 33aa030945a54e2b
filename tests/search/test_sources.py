"""The search takes LoRA adapters (`BASE+ADAPTER` in models.sources) and sources whose
vocabulary differs (added tokens) as sources."""

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file, save_file

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


def test_search_with_a_source_that_added_tokens(toy_cache: Path, tmp_path: Path) -> None:
    """A source with a larger vocabulary (a chat fine-tune's added tokens) is aligned, by
    token, to the live model's vocabulary: the recipes carry `tokenizer_source`."""
    import shutil

    from transformers import AutoTokenizer

    from evomerge.toy import ensure_family

    family = ensure_family(size="small", cache_dir=toy_cache)
    chat = tmp_path / "lang_ja_chat"
    shutil.copytree(family.path("lang_ja"), chat)
    tok = AutoTokenizer.from_pretrained(chat)
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.save_pretrained(chat)
    tensors = load_file(chat / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            extra = torch.zeros(len(tok) - tensors[name].shape[0], tensors[name].shape[1])
            tensors[name] = torch.cat([tensors[name], extra])
    save_file(tensors, chat / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((chat / "config.json").read_text())
    config["vocab_size"] = len(tok)
    (chat / "config.json").write_text(json.dumps(config))
    cfg = search_config(
        compose(
            "search",
            [
                *SMALL_SEARCH,
                f"results_dir={tmp_path}",
                "run=chat",
                "optimizer.n_trials=2",
                f"models.sources.lang_ja={chat}",
            ],
        )
    )
    summary = run_search(cfg, progress=False)
    assert summary["trials"] == 2 and summary["failed"] == 0
    recipe = load_recipe(cfg.run_dir / "best_recipe.yaml")
    assert recipe.tokenizer_source == str(family.base)
    out = merge_to_disk(recipe, tmp_path / "out")
    base_vocab = AutoTokenizer.from_pretrained(family.base).get_vocab()
    assert AutoTokenizer.from_pretrained(out).get_vocab() == base_vocab
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(base_vocab)
