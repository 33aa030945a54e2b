from pathlib import Path

import pytest

from evomerge.merge import merge_to_disk
from evomerge.recipe import load_recipe
from evomerge_dev.bench.checkpoints import config_for, generate_family, parameter_count
from evomerge_dev.bench.merge import METHODS, compare, recipe_text


def test_config_for_is_close_to_the_requested_size():
    for params in (0.5e9, 1e9):
        assert abs(parameter_count(config_for(params)) - params) / params < 0.1


def test_generated_family_is_deterministic(tmp_path: Path):
    a = generate_family(tmp_path / "a", 3e6, hidden=32, shard_size=2 * 10**6)
    b = generate_family(tmp_path / "b", 3e6, hidden=32, shard_size=2 * 10**6)
    for x, y in zip(a, b, strict=True):
        files = sorted(p.name for p in x.glob("*.safetensors"))
        assert len(files) > 1  # sharded
        assert all((x / f).read_bytes() == (y / f).read_bytes() for f in files)


@pytest.mark.parametrize("method", METHODS)
def test_recipes_merge_and_compare(tmp_path: Path, method: str):
    models = generate_family(tmp_path / "cache", 3e6, hidden=32)
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text(method, *models, "bfloat16"))
    out = merge_to_disk(load_recipe(path), tmp_path / "out")
    diff = compare(out, out, models[0])
    assert diff["max_abs_diff"] == 0.0
    assert 0 < diff["evomerge_changed_share"] <= 1
