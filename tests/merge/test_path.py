"""Data-flow paths: `input_scale` in recipes, its fold into weights, and the in-memory path model
whose logits must equal the exported checkpoint's."""

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from evomerge.errors import MergeError, RecipeError
from evomerge.merge import check_recipe, merge_to_disk
from evomerge.merge.path import PathModel, PathStep, recipe_path
from evomerge.recipe import Recipe, SliceSpec, SourceSpec, dump_recipe, load_recipe
from evomerge_dev.testing import make_tiny_llama


def load(ref: str) -> Any:
    return AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).eval()


def path_recipe(steps: list[tuple[str, int, float | None]]) -> Recipe:
    return Recipe(
        merge_method="passthrough",
        slices=tuple(
            SliceSpec(sources=(SourceSpec(m, (i, i + 1)),), input_scale=s) for m, i, s in steps
        ),
    )


def test_input_scale_round_trips_through_yaml() -> None:
    text = """
merge_method: passthrough
slices:
  - sources: [{model: a, layer_range: [0, 1]}]
  - sources: [{model: b, layer_range: [2, 3]}]
    input_scale: 0.75
"""
    recipe = load_recipe(text)
    assert recipe.slices[1].input_scale == 0.75 and recipe.slices[0].input_scale is None
    assert load_recipe(dump_recipe(recipe)) == recipe


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "positive"),
        (-1.5, "positive"),
        ("big", "positive"),
        (True, "positive"),
        (1e-200, r"positive number in \[1e-06, 1e\+06\]"),  # used to divide by zero
        (1e308, r"positive number in \[1e-06, 1e\+06\]"),  # used to zero the weights
    ],
)
def test_bad_input_scale_is_a_recipe_error(value: Any, message: str) -> None:
    text = f"""
merge_method: passthrough
slices:
  - sources: [{{model: a, layer_range: [0, 1]}}]
    input_scale: {value}
"""
    with pytest.raises(RecipeError, match=rf"slices\[0\]\.input_scale: must be a {message}"):
        check_recipe(load_recipe(text))


def test_the_product_of_input_scales_is_bounded() -> None:
    slices = "".join(
        "  - sources: [{model: a, layer_range: [0, 1]}]\n    input_scale: 1e6\n" for _ in range(6)
    )
    with pytest.raises(RecipeError, match=r"slices\[5\]\.input_scale: the product .* 1e\+36"):
        check_recipe(load_recipe(f"merge_method: passthrough\nslices:\n{slices}"))


def test_input_scale_needs_passthrough() -> None:
    text = """
merge_method: linear
slices:
  - sources: [{model: a, layer_range: [0, 1], parameters: {weight: 1}}]
    input_scale: 2.0
"""
    with pytest.raises(RecipeError, match="only passthrough can fold"):
        check_recipe(load_recipe(text))


def test_recipe_path_reads_slices_and_rejects_tensor_math() -> None:
    recipe = path_recipe([("a", 0, None), ("b", 1, 2.0)])
    assert recipe_path(recipe) == (PathStep("a", 0, 1.0), PathStep("b", 1, 2.0))
    ranged = Recipe("passthrough", slices=(SliceSpec((SourceSpec("a", (0, 2)),), input_scale=3),))
    assert recipe_path(ranged) == (PathStep("a", 0, 3.0), PathStep("a", 1, 1.0))
    scaled = Recipe("passthrough", slices=(SliceSpec((SourceSpec("a", (0, 1), {"scale": 0.5}),)),))
    assert recipe_path(scaled) is None


STEPS = [
    ("a", 0, None),
    ("a", 1, 1.6),
    ("b", 0, 0.55),
    ("a", 1, 1.3),  # a layer used twice: one KV-cache slot per position
    ("b", 2, 0.8),
    ("a", 0, 1.9),
]


@pytest.mark.parametrize("tied", [False, True])
def test_exported_checkpoint_equals_the_in_memory_path(tmp_path: Path, tied: bool) -> None:
    base = make_tiny_llama(tmp_path / "base", seed=0, num_layers=3, tie_word_embeddings=tied)
    refs = {"a": str(base), "b": str(make_tiny_llama(tmp_path / "b", seed=1, base=base))}
    recipe = path_recipe([(refs[m], i, s) for m, i, s in STEPS])
    paths = PathModel(load)
    paths.set_path(recipe_path(recipe) or ())
    exported = load(str(merge_to_disk(recipe, tmp_path / "out")))
    assert exported.config.num_hidden_layers == len(STEPS)
    ids = torch.randint(3, 60, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (paths.model(ids).logits - exported(ids).logits).abs().max().item()
        ours = paths.model.generate(ids[:1], max_new_tokens=6, do_sample=False)
        theirs = exported.generate(ids[:1], max_new_tokens=6, do_sample=False)
    assert diff < 1e-4
    assert torch.equal(ours, theirs)


def test_literal_hidden_state_scaling_matches_up_to_epsilon(tmp_path: Path) -> None:
    base = make_tiny_llama(tmp_path / "base", seed=0, num_layers=3)
    recipe = path_recipe([(str(base), i, s) for _, i, s in STEPS if i < 3])
    folded, literal = PathModel(load), PathModel(load, fold=False)
    steps = recipe_path(recipe) or ()
    folded.set_path(steps)
    literal.set_path(steps)
    ids = torch.randint(3, 60, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = folded.model(ids).logits, literal.model(ids).logits
    assert torch.allclose(a, b, atol=1e-2)


def test_path_of_one_model_in_order_is_that_model(tmp_path: Path) -> None:
    base = make_tiny_llama(tmp_path / "base", seed=0, num_layers=3)
    source = load(str(base))
    paths = PathModel(load, preloaded={str(base): source})
    paths.set_path([PathStep(str(base), i) for i in range(3)])
    ids = torch.randint(3, 60, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(paths.model(ids).logits, source(ids).logits)


def test_bad_paths_are_clear_errors(tmp_path: Path) -> None:
    base = make_tiny_llama(tmp_path / "base", seed=0, num_layers=2)
    narrow = make_tiny_llama(tmp_path / "narrow", seed=0, num_layers=2, hidden_size=16)
    paths = PathModel(load)
    with pytest.raises(MergeError, match="empty path"):
        paths.set_path([])
    with pytest.raises(MergeError, match="has 2 layers, got layer 5"):
        paths.set_path([PathStep(str(base), 5)])
    with pytest.raises(MergeError, match=r"hidden_size is 32 .* but 16"):
        paths.set_path([PathStep(str(base), 0), PathStep(str(narrow), 0)])
