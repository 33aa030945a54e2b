"""Everything in a merged checkpoint besides the weights: config, tokenizer, model card."""

from __future__ import annotations

import json
from pathlib import Path

from evomerge.merge.architecture import output_config
from evomerge.merge.cache import SourceCache
from evomerge.merge.card import render_card
from evomerge.merge.confine import ModelRoot
from evomerge.merge.plan import MergePlan
from evomerge.merge.vocabulary import TOKENIZER_FILES, copy_files
from evomerge.recipe import dump_recipe

TAGALONG_FILES = ("generation_config.json",)


def check_extras(plan: MergePlan, cache: SourceCache) -> None:
    """Before any work: every file write_extras will copy resolves inside its model's root."""
    for directory, names in _extras(plan, cache):
        root = ModelRoot.of(directory)
        for name in names:
            if root.exists(name):
                root.resolve(name)


def _extras(plan: MergePlan, cache: SourceCache) -> list[tuple[Path, tuple[str, ...]]]:
    extras: list[tuple[Path, tuple[str, ...]]] = [(cache.directory(plan.reference), TAGALONG_FILES)]
    if plan.vocabulary is None:  # a merged vocabulary writes its own tokenizer
        source = plan.recipe.tokenizer_source
        tokenizer_ref = plan.reference if source in (None, "base") else source
        extras.insert(0, (cache.directory(tokenizer_ref), TOKENIZER_FILES))
    return extras


def write_extras(
    plan: MergePlan, cache: SourceCache, out: Path, dtype_name: str | None, card: str | None = None
) -> None:
    reference = cache.layout(plan.reference)
    layer_sources = [(cache.layout(model), layer) for model, layer in plan.layer_sources]
    dtype = dtype_name or str(plan.jobs[0].dtype).removeprefix("torch.")
    config = output_config(reference, layer_sources, dtype)
    if plan.vocabulary is not None:  # merged vocabulary: its rows and its tokenizer
        config["vocab_size"] = plan.vocabulary.rows
        plan.vocabulary.tokenizer.save_pretrained(str(out))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for directory, names in _extras(plan, cache):
        copy_files(ModelRoot.of(directory), out, names)
    (out / "README.md").write_text(card if card is not None else model_card(plan))


def model_card(plan: MergePlan) -> str:
    recipe = plan.recipe
    return render_card(
        models=recipe.referenced_models(),
        methods=[recipe.merge_method],
        intro=f"Merged with evomerge (`python -m evomerge merge`) using `{recipe.merge_method}`. "
        "The recipe below reproduces it.",
        recipe_yaml=dump_recipe(recipe),
    )
