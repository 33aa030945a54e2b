"""PS genome <-> recipe: pure, round-trip, mergekit-shaped."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evomerge.errors import ConfigError, RecipeError
from evomerge.genome.ps import SEARCHABLE, PSSpace, decode, encode
from evomerge.recipe import dump_recipe, load_recipe


def space(method="dare_ties", layers=4, k=1, n_models=2):
    return PSSpace(
        base_model="/models/base",
        models=tuple(f"/models/m{i}" for i in range(n_models)),
        model_names=tuple(f"m{i}" for i in range(n_models)),
        num_layers=layers,
        method=method,
        layers_per_group=k,
        parameters={} if method == "sce" else {"normalize": False},
        # DELLA keeps density +/- epsilon (0.15) inside (0, 1)
        density_range=(0.2, 0.8) if method.startswith("della") else (0.1, 1.0),
    )


@st.composite
def spaces(draw):
    layers = draw(st.integers(1, 6))
    return space(
        method=draw(st.sampled_from(SEARCHABLE)),
        layers=layers,
        k=draw(st.integers(1, layers)),
        n_models=draw(st.integers(1, 3)),
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data(), s=spaces())
def test_encode_inverts_decode_through_yaml(data, s):
    x = data.draw(arrays(np.float64, s.dim, elements=st.floats(0, 1)))
    recipe = decode(s, x)
    again = load_recipe(dump_recipe(recipe))
    assert again == recipe
    np.testing.assert_allclose(encode(s, again), x, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), s=spaces())
def test_decode_clips_to_the_box_and_values_stay_in_range(data, s):
    x = data.draw(arrays(np.float64, s.dim, elements=st.floats(-3, 3)))
    recipe = decode(s, x)
    assert decode(s, np.clip(x, 0, 1)) == recipe
    for m in recipe.models:
        for name, conditions in m.parameters.items():
            lo, hi = s.range_of(name)
            assert all(lo <= c.value <= hi for c in conditions)


def test_names_groups_and_x0_is_the_uniform_merge():
    s = space(layers=5, k=2)
    assert [g.name for g in s.groups] == ["embed", "layers.0-1", "layers.2-3", "layers.4", "head"]
    assert s.names[:4] == (
        "embed.m0.weight",
        "embed.m0.density",
        "embed.m1.weight",
        "embed.m1.density",
    )
    assert s.dim == 5 * 2 * 2
    recipe = decode(s, s.x0())
    values = {c.value for m in recipe.models for c in m.parameters["weight"]}
    assert values == {1.0}
    densities = [c.value for m in recipe.models for c in m.parameters["density"]]
    assert densities == pytest.approx([0.5] * len(densities))


def test_every_tensor_prefix_is_covered_once_per_parameter():
    recipe = decode(space(layers=3, k=2), np.full(space(layers=3, k=2).dim, 0.3))
    filters = [c.filter for c in recipe.models[0].parameters["weight"]]
    assert filters == [
        "model.embed_tokens",
        "model.layers.0.",
        "model.layers.1.",
        "model.layers.2.",
        "model.norm.",
        "lm_head",
    ]


def test_linear_has_no_base_and_no_density():
    s = space(method="linear")
    recipe = decode(s, s.x0())
    assert recipe.base_model is None
    assert set(recipe.models[0].parameters) == {"weight"}
    assert all(n.endswith(".weight") for n in s.names)


def test_encode_rejects_recipes_outside_the_space():
    s = space(layers=4, k=2)
    recipe = decode(s, s.x0())
    with pytest.raises(
        RecipeError, match="merge_method: the space searches 'ties', got 'dare_ties'"
    ):
        encode(space(method="ties", layers=4, k=2), recipe)
    finer = decode(space(layers=4, k=1), np.linspace(0, 1, space(layers=4, k=1).dim))
    with pytest.raises(RecipeError, match=r"models\[0\]\.parameters\.weight: group 'layers.0-1'"):
        encode(s, finer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "slerp"}, "space.method: 'slerp' is not searchable"),
        ({"layers_per_group": 9}, r"space.layers_per_group: must be in \[1, 4\]"),
        ({"weight_range": (1.0, 1.0)}, "space.weight_range: must satisfy low < high"),
        ({"density_range": (0.0, 1.5)}, r"space.density_range: must lie in \[0, 1\]"),
        ({"x0_weight": 5.0}, r"space.x0_weight: must lie in \[0.0, 2.0\]"),
        ({"base_model": None}, "models.base_model: method 'dare_ties' needs a base model"),
        ({"model_names": ("a", "a")}, "names must be unique"),
    ],
)
def test_bad_spaces_are_config_errors(kwargs, message):
    args = {
        "base_model": "/b",
        "models": ("/m0", "/m1"),
        "model_names": ("m0", "m1"),
        "num_layers": 4,
    } | kwargs
    with pytest.raises(ConfigError, match=message):
        PSSpace(**args)


def test_wrong_genome_length_is_an_error():
    with pytest.raises(ConfigError, match="genome: expected 24 coordinates"):
        decode(space(), np.zeros(3))


@pytest.mark.parametrize("method", ["della", "della_linear", "sce"])
def test_decoded_recipes_merge_into_a_live_model(method, tmp_path):
    """The genome's recipe for each newly searchable method runs through the merge core."""
    import torch
    from transformers import AutoModelForCausalLM

    from evomerge.merge import MergeOptions, SourceCache, merge_into_model, merge_to_disk
    from evomerge_dev.testing import make_tiny_llama

    base = make_tiny_llama(tmp_path / "base", seed=0)
    models = tuple(make_tiny_llama(tmp_path / f"m{i}", seed=i + 1, base=base) for i in range(2))
    s = PSSpace(
        base_model=str(base),
        models=tuple(map(str, models)),
        model_names=("m0", "m1"),
        num_layers=2,
        method=method,
        parameters={"epsilon": 0.1} if method.startswith("della") else {"int8_mask": True},
        density_range=(0.2, 0.8),
    )
    x = np.random.default_rng(0).random(s.dim)
    recipe = load_recipe(dump_recipe(decode(s, x)))  # a plain, valid recipe
    if method == "sce":
        assert s.names == (
            "embed.select_topk",
            "layers.0.select_topk",
            "layers.1.select_topk",
            "head.select_topk",
        )
        assert len({c.value for c in recipe.parameters["select_topk"]}) == 4
    model = AutoModelForCausalLM.from_pretrained(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = MergeOptions(random_seed=3)
    merge_into_model(recipe, model, options, SourceCache(preload=True))
    live = model.state_dict()
    disk = AutoModelForCausalLM.from_pretrained(merge_to_disk(recipe, tmp_path / "out", options))
    for name, tensor in disk.state_dict().items():
        assert torch.equal(live[name], tensor), name
    assert not torch.equal(
        live["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"]
    )
    np.testing.assert_allclose(encode(s, recipe), x, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        (
            "della",
            {},
            r"space.density_range: for della, density - epsilon > 0 .* got density 0.1, epsilon 0.15",
        ),
        (
            "sce",
            {"parameters": {"normalize": False}},
            r"space.parameters.normalize: not a parameter of sce",
        ),
        (
            "sce",
            {"parameters": {"select_topk": 0.5}},
            "space.parameters.select_topk: searched per layer group",
        ),
    ],
)
def test_new_methods_reject_spaces_they_cannot_merge(method, kwargs, message):
    args = {"base_model": "/b", "models": ("/m0",), "model_names": ("m0",), "num_layers": 2}
    with pytest.raises(ConfigError, match=message):
        PSSpace(method=method, **(args | kwargs))


def test_the_registry_decides_what_a_genome_holds():
    """Genome parameters, their ranges and the base model come from the method registry."""
    from evomerge.merge.methods import METHODS

    assert SEARCHABLE == (
        "dare_linear",
        "dare_ties",
        "della",
        "della_linear",
        "linear",
        "sce",
        "task_arithmetic",
        "ties",
    )
    for name in SEARCHABLE:
        s = PSSpace(
            base_model="/b",
            models=("/m0",),
            model_names=("m0",),
            num_layers=2,
            method=name,
            density_range=(0.2, 0.8),
        )
        genome = METHODS[name].genome
        assert set(s.parameter_names) | set(s.group_parameter_names) == set(genome)
        assert {n.rsplit(".", 1)[1] for n in s.names} == set(genome)
        assert (decode(s, s.x0()).base_model is not None) == METHODS[name].needs_base


def test_coordinates_name_each_coordinate_with_its_model_and_parameter():
    """The one place PS coordinate names are taken apart: `coordinates` for a space at hand,
    `split_coordinate` for names read back from a study."""
    from evomerge.genome.ps import split_coordinate

    with_group = 0
    for method in SEARCHABLE:
        s = space(method=method, layers=4, k=2)
        assert [name for name, _, _ in s.coordinates] == list(s.names)
        for name, model, parameter in s.coordinates:
            assert name.endswith(f".{parameter}")
            with_group += model is None
            if model is not None:
                assert model in s.model_names and name.endswith(f".{model}.{parameter}")
                assert split_coordinate(name) == (name.rsplit(".", 2)[0], model, parameter)
    assert with_group  # some method has a per-group parameter
    assert split_coordinate("layers.0-3.math_en.weight") == ("layers.0-3", "math_en", "weight")
    assert split_coordinate("weight") is None
