"""Hypothesis strategies for recipe fuzzing (tests and scripts/reliability.py; needs `dev`).

Recipes are generated near the valid ones, where bugs live: real keys and method names with
values of every wrong kind (huge integers, NaN and infinities, nested containers, odd paths and
shell- or environment-looking strings), plus YAML text that is mutated or malformed outright.
`check_recipe_text` is the property: a recipe either parses or fails with a RecipeError whose
message starts with the key path (or `recipe:` for the document as a whole).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import strategies as st

from evomerge.errors import RecipeError
from evomerge.merge import check_recipe
from evomerge.recipe import Recipe, load_recipe

METHOD_NAMES = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp", "passthrough", "nope")
PARAM_NAMES = ("weight", "density", "t", "normalize", "epsilon", "lambda", "scale", "x y:z")
ODD_STRINGS = (
    "",
    " ",
    "../../etc/passwd",
    "/dev/zero",
    "~/model",
    "$HOME/model",
    "${PATH}",
    "`touch /tmp/evomerge-pwned`",
    "$(touch /tmp/evomerge-pwned)",
    "; rm -rf /",
    "a\x00b",
    "C:\\models\\x",
    "org/name",
    "✓ 模型",
    "1e-3",
    "nan",
    ".inf",
    "x" * 5000,
)
# A key path: `recipe` (the document), or a recipe key with `.key` / `[i]` steps after it; an
# unknown key is its own path (whatever the user wrote), followed by "unknown key".
KEY_PATH = re.compile(
    r"^((recipe|merge_method|base_model|models|slices|parameters|dtype|out_dtype"
    r"|tokenizer_source|random_seed)([.\[][^\n]*?)?: |[^\n]+: unknown key; valid keys here)",
)


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(ODD_STRINGS),
        st.text(max_size=20),
    )


def values() -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(("filter", "value", "model", "x")), inner, max_size=3),
        ),
        max_leaves=8,
    )


def parameter_maps() -> st.SearchStrategy[Any]:
    return st.one_of(values(), st.dictionaries(st.sampled_from(PARAM_NAMES), values(), max_size=3))


def model_entries() -> st.SearchStrategy[Any]:
    entry = st.fixed_dictionaries(
        {},
        optional={
            "model": st.one_of(st.sampled_from(ODD_STRINGS), values()),
            "parameters": parameter_maps(),
            "junk": values(),
        },
    )
    return st.one_of(entry, st.sampled_from(ODD_STRINGS), values())


def source_entries() -> st.SearchStrategy[Any]:
    layer_range = st.one_of(st.lists(scalars(), max_size=3), values())
    return st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(ODD_STRINGS),
            "layer_range": layer_range,
            "parameters": parameter_maps(),
        },
    )


def slice_entries() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "sources": st.one_of(st.lists(source_entries(), max_size=3), values()),
                "parameters": parameter_maps(),
                "base_model": st.one_of(st.sampled_from(ODD_STRINGS), values()),
                "input_scale": scalars(),
            },
        ),
        values(),
    )


def recipe_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """Mappings with the recipe's keys (and some others) holding values of any kind."""
    return st.fixed_dictionaries(
        {},
        optional={
            "merge_method": st.one_of(st.sampled_from(METHOD_NAMES), scalars()),
            "base_model": st.one_of(st.sampled_from(ODD_STRINGS), scalars()),
            "models": st.one_of(st.lists(model_entries(), max_size=3), values()),
            "slices": st.one_of(st.lists(slice_entries(), max_size=3), values()),
            "parameters": parameter_maps(),
            "dtype": st.one_of(st.sampled_from(("float32", "bfloat16", "int8")), scalars()),
            "out_dtype": scalars(),
            "tokenizer_source": st.one_of(st.sampled_from(("base", "union")), scalars()),
            "random_seed": scalars(),
            "name": scalars(),
            "chat_template": values(),
            "unknown": values(),
        },
    )


def valid_recipe_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """Recipes that should parse: linear / task_arithmetic over 1-3 models, odd numbers kept."""
    number = st.one_of(st.floats(-1e300, 1e300), st.integers(-(10**30), 10**30))
    model = st.fixed_dictionaries(
        {
            "model": st.sampled_from(ODD_STRINGS[2:14]),
            "parameters": st.fixed_dictionaries({"weight": number}),
        }
    )
    return st.fixed_dictionaries(
        {"merge_method": st.just("linear"), "models": st.lists(model, min_size=1, max_size=3)},
        optional={"dtype": st.sampled_from(("float32", "bfloat16")), "random_seed": st.integers()},
    )


def _dump(data: Any) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return repr(data)


def recipe_texts() -> st.SearchStrategy[str]:
    """YAML text: dumped recipe mappings, the same with bytes cut or spliced, and junk."""
    dumped = st.one_of(recipe_dicts(), valid_recipe_dicts()).map(_dump)

    def mutate(text: str, at: int, cut: int, insert: str) -> str:
        at %= len(text) + 1
        return text[:at] + insert + text[at + cut :]

    mutated = st.builds(
        mutate,
        dumped,
        st.integers(0, 10**6),
        st.integers(0, 8),
        st.sampled_from(
            (
                "",
                ":",
                "- ",
                "[",
                "{",
                "&a ",
                "*a",
                "!!python/object:os.system ",
                "\t",
                "\n  ",
                "'",
                '"',
                "%YAML 9\n",
                "!!int ",
                "!!float ",
                "!!timestamp ",
                "!!bool ",
                "---\n",
                "? ",
            )
        ),
    )
    junk = st.one_of(
        st.text(max_size=80),
        st.sampled_from(("[" * 3000 + "]" * 3000, "{a: " * 2000, "!!binary AAAA", "\x00", "")),
    )
    return st.one_of(dumped, mutated, junk)


def check_recipe_text(text: str) -> Recipe | RecipeError:
    """Parse `text`; the only acceptable failure is a RecipeError that names its key path."""
    try:
        return check_recipe(load_recipe(text))
    except RecipeError as e:
        if not KEY_PATH.match(str(e)):
            raise AssertionError(f"RecipeError without a key path: {e}") from e
        return e
