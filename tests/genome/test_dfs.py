"""DFS genome <-> passthrough path recipe: pure, round-trip, bad input as clear errors."""

import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evomerge.errors import ConfigError, RecipeError
from evomerge.genome.dfs import OFF, ON, SCALINGS, DFSSpace, decode, encode
from evomerge.merge.path import recipe_path
from evomerge.recipe import Recipe, SliceSpec, SourceSpec, dump_recipe, load_recipe


def space(layers=(2, 3), repeats=3, scaling="full", max_path_length=None, hidden_sizes=()):
    return DFSSpace(
        models=tuple(f"/models/m{i}" for i in range(len(layers))),
        model_names=tuple(f"m{i}" for i in range(len(layers))),
        num_layers=layers,
        repeats=repeats,
        scaling=scaling,
        max_path_length=max_path_length,
        hidden_sizes=hidden_sizes,
    )


@st.composite
def spaces(draw):
    layers = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    limit = draw(st.one_of(st.none(), st.integers(1, 6)))
    return space(layers, draw(st.integers(1, 3)), draw(st.sampled_from(SCALINGS)), limit)


def bits(s, x):
    return [v > 0.5 for v in np.asarray(x)[: s.num_slots]]


@settings(max_examples=80, deadline=None)
@given(data=st.data(), s=spaces())
def test_decode_encode_decode_is_the_same_recipe_through_yaml(data, s):
    x = data.draw(arrays(np.float64, s.dim, elements=st.floats(0, 1)))
    assume(any(bits(s, x)))
    recipe = decode(s, x)
    again = load_recipe(dump_recipe(recipe))
    assert again == recipe
    assert decode(s, encode(s, again)) == recipe


@settings(max_examples=60, deadline=None)
@given(data=st.data(), s=spaces())
def test_encode_is_canonical_and_keeps_the_scales_on_the_path(data, s):
    """encode puts each path layer in the earliest slot that fits: a fixed point of the round
    trip, with the same number of used slots and the same scales along the path."""
    x = data.draw(arrays(np.float64, s.dim, elements=st.floats(0, 1)))
    assume(any(bits(s, x)) and s.max_path_length is None)
    y = encode(s, decode(s, x))
    np.testing.assert_array_equal(encode(s, decode(s, y)), y)
    assert sum(bits(s, y)) == sum(bits(s, x))
    assert set(y[: s.num_slots]) <= {ON, OFF}
    used = [t % len(s.layout) for t, b in enumerate(bits(s, x)) if b]
    for a, b in itertools.pairwise(used):
        if s.scaling != "none":
            i = s.num_slots + s.scale_keys.index(s.scale_key(a, b))
            assert abs(s.from_unit(y[i]) - s.from_unit(x[i])) < 2e-6


@settings(max_examples=40, deadline=None)
@given(data=st.data(), s=spaces())
def test_paths_respect_the_layout_limit_and_scale_range(data, s):
    x = data.draw(arrays(np.float64, s.dim, elements=st.floats(-2, 2)))
    assume(any(bits(s, np.clip(x, 0, 1))))
    recipe = decode(s, x)
    assert decode(s, np.clip(x, 0, 1)) == recipe
    assert len(recipe.slices) <= (s.max_path_length or s.num_slots)
    lo, hi = s.scale_range
    for p, sl in enumerate(recipe.slices):
        assert sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0] == 1
        if p == 0 or s.scaling == "none":
            assert sl.input_scale is None
        else:
            assert sl.input_scale is not None and lo <= sl.input_scale <= hi


def test_names_layout_and_dimensions():
    s = space((2, 3), repeats=3)
    assert s.layout == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2))
    assert s.num_slots == 15 and s.dim == 15 + 25
    assert s.names[:3] == ("slot.00.m0.0", "slot.01.m0.1", "slot.02.m1.0")
    assert s.names[15] == "scale.m0.0->m0.0" and s.names[-1] == "scale.m1.2->m1.2"
    pair = space((2, 3), scaling="model_pair")
    assert pair.names[15:] == ("scale.m0->m0", "scale.m0->m1", "scale.m1->m0", "scale.m1->m1")
    assert space((2, 3), scaling="none").dim == 15
    assert len(set(s.names)) == s.dim


def test_x0_is_the_first_model_unscaled():
    s = space((2, 3))
    recipe = decode(s, s.x0())
    assert [sl.sources[0].model for sl in recipe.slices] == ["/models/m0"] * 2
    assert recipe_path(recipe) is not None
    assert all(sl.input_scale in (None, 1.0) for sl in recipe.slices)


def test_scales_follow_the_parameterization():
    s = space((2, 2), scaling="model_pair")
    x = np.full(s.dim, 0.2)
    x[[0, 2, 5]] = 0.9  # m0.0, m1.0, then m0.1 in the second repetition
    x[s.num_slots + 1] = 1.0  # m0 -> m1: the top of the scale range
    x[s.num_slots + 2] = 0.0  # m1 -> m0: the bottom
    recipe = decode(s, x)
    assert [(sl.sources[0].model[-2:], sl.sources[0].layer_range[0]) for sl in recipe.slices] == [
        ("m0", 0),
        ("m1", 0),
        ("m0", 1),
    ]
    assert [sl.input_scale for sl in recipe.slices] == [None, 2.0, 0.5]


def test_max_path_length_keeps_the_first_slots():
    s = space((2,), repeats=3, max_path_length=4)
    recipe = decode(s, np.concatenate([np.ones(6), np.full(s.dim - 6, 0.5)]))
    assert len(recipe.slices) == 4
    with pytest.raises(RecipeError, match="more than the space's max_path_length 4"):
        encode(s, decode(space((2,), repeats=3), np.ones(space((2,), repeats=3).dim)))


def test_empty_path_is_a_recipe_error():
    s = space()
    with pytest.raises(RecipeError, match="empty path"):
        decode(s, np.full(s.dim, 0.3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeats": 0}, "repeats: must be >= 1, got 0"),
        ({"scaling": "diagonal"}, "scaling: must be one of"),
        ({"max_path_length": 0}, "max_path_length: must be >= 1"),
        ({"hidden_sizes": (32, 64)}, r"same hidden_size, got \{'m0': 32, 'm1': 64\}"),
        ({"layers": (2, 0)}, "layer count >= 1"),
    ],
)
def test_bad_spaces_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        space(**kwargs)


def one_layer(model, layer, scale=None):
    return SliceSpec(sources=(SourceSpec(model, (layer, layer + 1)),), input_scale=scale)


@pytest.mark.parametrize(
    ("slices", "message"),
    [
        ([one_layer("/models/other", 0)], "expected one layer"),
        ([one_layer("/models/m0", 5)], "has 2 layers"),
        ([SliceSpec(sources=(SourceSpec("/models/m0", (0, 2)),))], "expected one layer"),
        ([one_layer("/models/m0", 0, 1.5)], r"slices\[0\]\.input_scale: the space has no scale"),
        ([one_layer("/models/m0", 0), one_layer("/models/m0", 1, 9.0)], "scale_range"),
        ([one_layer("/models/m0", 1)] * 4, "does not fit the layout repeated 3"),
        (
            [one_layer("/models/m0", 0), one_layer("/models/m0", 1, 1.5)] * 2,
            "differs from 1.5",
        ),
    ],
)
def test_recipes_outside_the_space_are_recipe_errors(slices, message):
    s = space((2, 3), scaling="model_pair")
    with pytest.raises(RecipeError, match=message):
        encode(s, Recipe(merge_method="passthrough", slices=tuple(slices)))


def test_encode_rejects_other_methods():
    recipe = Recipe(merge_method="linear", slices=(one_layer("/models/m0", 0),))
    with pytest.raises(RecipeError, match="passthrough recipe with slices"):
        encode(space(), recipe)
