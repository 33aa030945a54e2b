"""The merge benchmark's floor and its recipes per source tree (evomerge_dev/bench/merge.py)."""

from pathlib import Path

from safetensors.torch import load_file

from evomerge.recipe import load_recipe
from evomerge_dev.bench.checkpoints import generate_family
from evomerge_dev.bench.merge import MERGEKIT, SELECTING, floor_copy, write_recipes


def test_floor_writes_one_model_of_the_inputs_size(tmp_path: Path) -> None:
    models = generate_family(tmp_path / "cache", 3e6, hidden=32, shard_size=2 * 10**6)
    floor_copy(list(models), tmp_path / "floor")
    written = sorted((tmp_path / "floor").glob("*.safetensors"))
    assert [f.name for f in written] == sorted(f.name for f in models[0].glob("*.safetensors"))
    for file in written:
        ours, first = load_file(file), load_file(models[0] / file.name)
        assert ours.keys() == first.keys() and all(ours[k].equal(first[k]) for k in ours)


def test_tie_rule_goes_only_to_trees_that_know_the_key(tmp_path: Path) -> None:
    models = generate_family(tmp_path / "cache", 3e6, hidden=32)
    this = Path(__file__).resolve().parents[2]
    old = tmp_path / "old"
    (old / "evomerge").mkdir(parents=True)
    (old / "evomerge" / "recipe.py").write_text('_TOP_KEYS = ("drop_scheme",)\n')
    trees = {"this": this, "before": old}
    methods = ["ties", "dare_ties", "della", "linear"]
    recipes = write_recipes(tmp_path, models, methods, trees, "bfloat16", "threshold")
    for (method, tool), path in recipes.items():
        text = path.read_text()
        assert ("tie_rule: threshold" in text) == (tool == "this" and method in SELECTING)
        assert ("drop_scheme: counter" in text) == (method in ("dare_ties", "della"))
        if tool != MERGEKIT:
            load_recipe(path)  # a valid recipe
