"""The planner alone: jobs, inputs and resolved parameters, from headers only (no weights)."""

from pathlib import Path

import pytest

from evomerge.errors import MergeError, RecipeError
from evomerge.merge import SourceCache
from evomerge.merge.plan import MergePlan, TensorInput, plan_merge
from evomerge.recipe import load_recipe

SUFFIXES = 9  # Llama layer tensors in evomerge_dev.testing models


def _plan(text: str, family: dict[str, Path]) -> MergePlan:
    for key in sorted(family, key=len, reverse=True):
        text = text.replace(f"${key}", str(family[key]))
    recipe = load_recipe(text)
    cache = SourceCache()
    return plan_merge(recipe, {ref: cache.layout(ref) for ref in recipe.referenced_models()})


def test_every_tensor_is_covered_once(family: dict[str, Path]) -> None:
    plan = _plan(
        "merge_method: ties\nbase_model: $base\n"
        "models: [{model: $a, parameters: {weight: 1}}, {model: $b, parameters: {weight: 1}}]",
        family,
    )
    names = [job.name for job in plan.jobs]
    assert len(names) == len(set(names)) == 3 + 3 * SUFFIXES
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    job = plan.jobs[1]
    assert job.has_base and job.inputs[-1] == TensorInput(str(family["base"]), job.name)
    assert [i.model for i in job.inputs[:-1]] == [str(family["a"]), str(family["b"])]


def test_parameters_resolve_by_precedence_gradient_and_filter(family: dict[str, Path]) -> None:
    plan = _plan(
        """
merge_method: ties
base_model: $base
parameters: {weight: 0.25, density: 0.5, normalize: false}
models:
  - model: $a
    parameters: {weight: [0.0, 1.0], density: [{filter: mlp, value: 0.9}]}
  - model: $b
""",
        family,
    )
    jobs = {job.name: job for job in plan.jobs}
    mlp = jobs["model.layers.1.mlp.up_proj.weight"]
    assert mlp.per_model["weight"] == (0.5, 0.25)  # layer 1 of 3: t = 0.5
    assert mlp.per_model["density"] == (0.9, 0.5)  # filter, then the global fallback
    attn = jobs["model.layers.2.self_attn.q_proj.weight"]
    assert attn.per_model == {"weight": (1.0, 0.25), "density": (0.5, 0.5)}
    assert jobs["model.embed_tokens.weight"].per_model["weight"] == (0.0, 0.25)  # t = 0
    assert attn.shared == {"normalize": False, "int8_mask": False, "rescale": False, "lambda": 1.0}


def test_slices_concatenate_layers(family: dict[str, Path]) -> None:
    plan = _plan(
        """
merge_method: passthrough
slices:
  - sources: [{model: $a, layer_range: [0, 2]}]
  - sources: [{model: $b, layer_range: [1, 3], parameters: {scale: 0.5}}]
""",
        family,
    )
    assert plan.layer_sources == (
        (str(family["a"]), 0),
        (str(family["a"]), 1),
        (str(family["b"]), 1),
        (str(family["b"]), 2),
    )
    jobs = {job.name: job for job in plan.jobs}
    assert jobs["model.layers.3.mlp.down_proj.weight"].inputs == (
        TensorInput(str(family["b"]), "model.layers.2.mlp.down_proj.weight"),
    )
    assert jobs["model.layers.3.mlp.down_proj.weight"].per_model["scale"] == (0.5,)
    assert jobs["model.embed_tokens.weight"].inputs[0].model == str(family["a"])
    assert jobs["lm_head.weight"].inputs[0].model == str(family["b"])


def test_a_tied_model_gives_its_embeddings_as_head(family: dict[str, Path], tmp_path: Path) -> None:
    from evomerge_dev.testing import make_tiny_llama

    tied = make_tiny_llama(tmp_path / "tied", seed=1, num_layers=3, tie_word_embeddings=True)
    plan = _plan(
        f"merge_method: linear\nmodels: [{{model: $a, parameters: {{weight: 1}}}}, {{model: {tied}, parameters: {{weight: 1}}}}]",
        family,
    )
    head = {job.name: job for job in plan.jobs}["lm_head.weight"]
    assert head.inputs[1] == TensorInput(str(tied), "model.embed_tokens.weight")


def test_depth_mismatch_needs_slices(family: dict[str, Path], tmp_path: Path) -> None:
    from evomerge_dev.testing import make_tiny_llama

    deep = make_tiny_llama(tmp_path / "deep", seed=1, num_layers=4)
    with pytest.raises(MergeError, match="every model needs the same number of layers"):
        _plan(
            f"merge_method: linear\nmodels: [{{model: $a, parameters: {{weight: 1}}}}, {{model: {deep}, parameters: {{weight: 1}}}}]",
            family,
        )


def test_filters_that_match_nothing_name_the_tensor(family: dict[str, Path]) -> None:
    with pytest.raises(
        RecipeError, match=r"no value applies to model\.embed_tokens\.weight of model"
    ):
        _plan(
            "merge_method: linear\nmodels: [{model: $a, parameters: {weight: [{filter: mlp, value: 1}]}}]",
            family,
        )
