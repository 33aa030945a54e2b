"""scripts/toy_grid.py's recipes are valid for the merge core and merge into a live model."""

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from transformers import AutoModelForCausalLM

from evomerge.merge import SourceCache, merge_into_model
from evomerge.recipe import parse_recipe
from evomerge.toy import ToyFamily

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "toy_grid.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("toy_grid", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_grid_recipe_parses_and_task_arithmetic_1_0_is_the_specialist(
    small_family: ToyFamily,
) -> None:
    recipes = load_script().grid(small_family)
    assert {r["merge_method"] for r in recipes.values()} == {
        "linear",
        "task_arithmetic",
        "ties",
        "dare_ties",
    }
    for recipe in recipes.values():
        parse_recipe(recipe)
    # weight 1 on the math specialist, 0 on the language one: the math specialist itself
    one = dict(recipes["task_arithmetic 1.0/1.0"])
    one["models"] = [
        {**m, "parameters": {"weight": 1.0 if "math" in m["model"] else 0.0}} for m in one["models"]
    ]
    live = AutoModelForCausalLM.from_pretrained(small_family.base)
    merge_into_model(parse_recipe(one), live, cache=SourceCache(preload=True))
    want = AutoModelForCausalLM.from_pretrained(small_family.path("math_en")).state_dict()
    for name, tensor in live.state_dict().items():
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=1e-6)
