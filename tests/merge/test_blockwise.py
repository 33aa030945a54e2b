"""Entry-wise methods merged in row blocks give the same bits as whole tensors."""

from pathlib import Path

import pytest

from evomerge.merge import METHODS, execute, merge_to_disk
from evomerge.recipe import load_recipe
from evomerge_dev.bench.checkpoints import generate_family
from evomerge_dev.bench.merge import recipe_text


@pytest.mark.parametrize("method", sorted(m.name for m in METHODS.values() if m.entrywise))
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_blockwise_equals_whole_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, dtype: str
):
    models = generate_family(tmp_path / "cache", 3e6, hidden=32)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(method, *models, dtype))
    monkeypatch.setattr(execute, "BLOCK", 10**12)  # never blockwise
    whole = merge_to_disk(load_recipe(recipe), tmp_path / "whole")
    monkeypatch.setattr(execute, "BLOCK", 1000)  # blocks of 31 rows
    blocks = merge_to_disk(load_recipe(recipe), tmp_path / "blocks")
    files = sorted(p.name for p in whole.glob("*.safetensors"))
    assert files
    assert all((whole / f).read_bytes() == (blocks / f).read_bytes() for f in files)
