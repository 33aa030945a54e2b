"""Recipe parsing, validation messages (with key paths), dumping and round trips."""

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evomerge.errors import RecipeError
from evomerge.merge import check_recipe
from evomerge.merge.plan import resolve_value
from evomerge.recipe import (
    Condition,
    ModelSpec,
    Recipe,
    SliceSpec,
    SourceSpec,
    dump_recipe,
    load_recipe,
    parse_recipe,
)

TIES = """
merge_method: ties
base_model: base
parameters: {normalize: true, int8_mask: true}
dtype: bfloat16
models:
  - model: a
    parameters:
      weight: [0, 0.5, 1]
      density: [{filter: mlp, value: 0.3}, {value: 0.7}]
  - model: b
    parameters: {weight: 1.0e-1, density: 0.5}
"""


def test_load_mergekit_style_recipe() -> None:
    recipe = load_recipe(TIES)
    assert recipe.merge_method == "ties" and recipe.base_model == "base"
    assert recipe.dtype == "bfloat16"
    a = recipe.models[0].parameters
    assert a["weight"] == (0, 0.5, 1)
    assert a["density"] == (Condition(0.3, "mlp"), Condition(0.7, None))
    assert recipe.models[1].parameters["weight"] == 0.1
    assert recipe.referenced_models() == ("base", "a", "b")


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(TIES)
    assert load_recipe(path) == load_recipe(TIES)


def test_slices_recipe() -> None:
    recipe = load_recipe(
        """
merge_method: passthrough
slices:
  - sources: [{model: a, layer_range: [0, 2]}]
  - sources: [{model: b, layer_range: [1, 3], parameters: {scale: 0.5}}]
"""
    )
    assert recipe.slices[1].sources[0] == SourceSpec("b", (1, 3), {"scale": 0.5})


def test_gradients_interpolate_like_mergekit() -> None:
    assert resolve_value((0.0, 1.0), "x", 0.25) == pytest.approx(0.25)
    assert resolve_value((0.0, 0.5, 1.0), "x", 0.75) == pytest.approx(0.75)
    assert resolve_value((1, 3), "x", 1.0) == 3
    conditions = (Condition(0.3, "mlp"), Condition((0.0, 1.0), "*"))
    assert resolve_value(conditions, "model.layers.0.mlp.up_proj.weight", 0.5) == 0.3
    assert resolve_value(conditions, "model.layers.0.self_attn.q_proj.weight", 0.5) == 0.5
    assert resolve_value((Condition(1.0, "mlp"),), "lm_head.weight", 0.0) is None


def test_dump_is_deterministic_and_ordered() -> None:
    text = dump_recipe(load_recipe(TIES))
    assert text == dump_recipe(load_recipe(text))
    assert text.splitlines()[0] == "merge_method: ties"
    assert text.index("base_model") < text.index("parameters") < text.index("models")


BAD = [
    ("merge_method: [", "malformed YAML"),
    ("- a\n- b", "a recipe must be a YAML mapping"),
    (
        "merge_method: tie\nmodels: [{model: a}]",
        "merge_method: unknown merge method 'tie'; valid methods: arcee_fusion, breadcrumbs,"
        " breadcrumbs_ties, dare_linear, dare_ties, della, della_linear, karcher, linear,"
        " model_stock, multislerp, nearswap, nuslerp, passthrough, ram, ramplus_tl, sce, slerp,"
        " task_arithmetic, ties",
    ),
    ("merge_method: linear", "give exactly one of `models` or `slices`"),
    (
        "merge_method: ties\nbase_model: b\nmodels:\n"
        + "".join(f"  - {{model: m{i}, parameters: {{weight: 1, density: {d}}}}}\n" for i, d in enumerate([0.5, 0.2, 1.7])),
        "models[2].parameters.density: must be in [0.0, 1.0], got 1.7",
    ),
    (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, density: [0.5, -1]}}]",
        "models[0].parameters.density[1]: must be in [0.0, 1.0], got -1",
    ),
    (
        "merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]",
        "base_model: ties needs a base model",
    ),
    (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a}]",
        "models[0].parameters.weight: required by ties",
    ),
    (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, densty: 0.5}}]",
        "models[0].parameters.densty: unknown parameter for ties; valid parameters: density, int8_mask,",
    ),
    (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, normalize: true}}]",
        "models[0].parameters.normalize: is a global parameter of ties",
    ),
    (
        "merge_method: linear\nmodels: [{model: a, parameters: {weight: yes_please}}]",
        "models[0].parameters.weight: must be a number, got 'yes_please'",
    ),
    (
        "merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [3, 1]}]}]",
        "slices[0].sources[0].layer_range: must be [start, end] with 0 <= start < end, got [3, 1]",
    ),
    (
        "merge_method: slerp\nbase_model: a\nslices: [{sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 3]}]}]\nparameters: {t: 0.5}",
        "slices[0].sources: every source of a slice needs the same number of layers",
    ),
    (
        "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}, {model: c}]\nparameters: {t: 0.5}",
        "models: slerp takes exactly 1 model(s) besides the base, got 2",
    ),
    ("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]", "parameters.t: required by slerp"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ndtype: float8", "dtype: must be one of"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\nmodles: []", "modles: unknown key"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ntokenizer_source: union\ntokenizer: {source: base}", "tokenizer: give either tokenizer_source or a tokenizer section"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ntokenizer: {tokens: {x: {source: {kind: model_token, model: a}}}}", "tokenizer.tokens['x'].source: give exactly one of token and token_id"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ntokenizer: {pad_to_multiple_of: 0}", "tokenizer.pad_to_multiple_of: must be an integer in [1, 4096] (MAX_PAD_TO_MULTIPLE), got 0"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ntokenizer: {tokens: {x: {source: {kind: mean}}}}", "tokenizer.tokens['x'].source.kind: must be model_token or zero, got 'mean'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_recipes_name_the_key_path(text: str, message: str) -> None:
    """Syntax (load_recipe) and what the method needs (check_recipe): each error names where."""
    with pytest.raises(RecipeError) as info:
        check_recipe(load_recipe(text))
    assert message in str(info.value)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")


# --- property: load(dump(r)) == r ------------------------------------------------------------

names = st.text("abcxyz_/.", min_size=1, max_size=8)
numbers = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False) | st.integers(-5, 5)
fractions = st.floats(0, 1) | st.sampled_from([0, 1])
conditions = st.builds(
    Condition, value=fractions | st.tuples(fractions, fractions), filter=st.none() | names
)
densities = (
    fractions
    | st.lists(fractions, min_size=2, max_size=4).map(tuple)
    | st.lists(conditions, min_size=1, max_size=3).map(tuple)
)
weights = numbers | st.lists(numbers, min_size=2, max_size=4).map(tuple)
model_params = st.fixed_dictionaries({"weight": weights}, optional={"density": densities})
shared = st.fixed_dictionaries({}, optional={"normalize": st.booleans(), "lambda": numbers})


@st.composite
def ties_recipes(draw: st.DrawFn) -> Recipe:
    base = draw(names)
    models = draw(
        st.lists(
            st.builds(ModelSpec, model=names, parameters=model_params),
            min_size=1,
            max_size=3,
            unique_by=lambda m: os.path.normpath(m.model),  # a model listed twice is an error
        )
    )
    models = [m for m in models if m.model != base] or [ModelSpec(base + "x", {"weight": 1.0})]
    return Recipe(
        merge_method=draw(st.sampled_from(["ties", "dare_ties", "task_arithmetic", "breadcrumbs"])),
        base_model=base,
        models=tuple(models),
        parameters=draw(shared),
        dtype=draw(st.sampled_from([None, "float32", "bfloat16"])),
        out_dtype=draw(st.sampled_from([None, "float16"])),
        tokenizer_source=draw(st.sampled_from([None, "base"])),
        random_seed=draw(st.none() | st.integers(0, 2**31)),
    )


@st.composite
def passthrough_recipes(draw: st.DrawFn) -> Recipe:
    def one_slice(model: str, start: int, scale: float | None) -> SliceSpec:
        params = {} if scale is None else {"scale": scale}
        return SliceSpec(sources=(SourceSpec(model, (start, start + 2), params),))

    slices = draw(
        st.lists(
            st.builds(one_slice, names, st.integers(0, 9), st.none() | numbers),
            min_size=1,
            max_size=4,
        )
    )
    return Recipe(merge_method="passthrough", slices=tuple(slices))


@settings(max_examples=60, deadline=None)
@given(ties_recipes() | passthrough_recipes())
def test_load_dump_round_trip(recipe: Recipe) -> None:
    text = dump_recipe(recipe)
    assert load_recipe(text) == recipe
    assert dump_recipe(load_recipe(text)) == text
    assert parse_recipe(recipe.to_dict()) == recipe


def test_syntax_alone_leaves_the_method_to_check_recipe() -> None:
    """load_recipe reads what any method could take; check_recipe holds it to its method."""
    recipe = load_recipe("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]\n")
    with pytest.raises(RecipeError, match="base_model: ties needs a base model"):
        check_recipe(recipe)
    with pytest.raises(RecipeError, match="merge_method: unknown merge method 'tie'"):
        check_recipe(load_recipe("merge_method: tie\nmodels: [{model: a}]\n"))


def test_tokenizer_section_round_trips() -> None:
    text = """
merge_method: linear
models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]
tokenizer:
  source: union
  pad_to_multiple_of: 8
  tokens:
    <|im_start|>: {source: b}
    <|im_end|>: {source: {kind: model_token, model: b, token: </s>}}
    <x>: {source: {kind: model_token, model: a, token_id: 3}, force: true}
    <pad>: {source: {kind: zero}}
"""
    recipe = load_recipe(text)
    assert recipe.tokenizer is not None and recipe.tokenizer.pad_to_multiple_of == 8
    assert recipe.tokenizer.tokens["<x>"].force
    assert load_recipe(dump_recipe(recipe)) == recipe
