"""Recipe fuzzing: any text either parses or fails with a RecipeError naming its key path.

scripts/reliability.py runs the same property on 5,000+ recipes; the cases below are the holes
the fuzzer found (each crashed the parser with a TypeError, ValueError, RecursionError, ... or
accepted a wrong type) before they were fixed.
"""

import pytest
from hypothesis import HealthCheck, given, settings

from evomerge.errors import RecipeError
from evomerge.recipe import load_recipe
from evomerge_dev.testing_fuzz import check_recipe_text, recipe_texts


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(recipe_texts())
def test_fuzzed_recipes_parse_or_fail_with_a_key_path(text):
    check_recipe_text(text)


M = "merge_method: linear\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 1200 + "]" * 1200, "recipe: malformed YAML: nested too deeply"),
        ("a: !!int abc", "recipe: malformed YAML: bad tagged value"),
        ("a: !!timestamp 2021-99-99", "recipe: malformed YAML: bad tagged value"),
        ("a: !!bool maybe", "recipe: malformed YAML: bad tagged value"),
        ("!!float ", "recipe: malformed YAML: bad tagged value"),
        (M + "models: 5", "models: must be a list, got 5"),
        (M + "models: abc", "models: must be a list, got 'abc'"),  # was: models a, b and c
        (M + "slices: {a: 1}", "slices: must be a list, got {'a': 1}"),
        (
            M + "models: [{model: a, parameters: {weight: 1" + "0" * 400 + "}}]",
            "models[0].parameters.weight: must be a finite number, got an integer of 401 digits",
        ),
        (
            M + "models: [{model: a, parameters: {weight: .nan}}]",
            "models[0].parameters.weight: must be a finite number, got nan",
        ),
    ],
)
def test_holes_found_by_the_fuzzer(text, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(text)
    assert str(info.value).startswith(message)
    assert check_recipe_text(text).__class__ is RecipeError
