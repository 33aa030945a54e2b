"""Merging to disk with reading, arithmetic and writing overlapped: the same files."""

from pathlib import Path

import pytest
import torch

from evomerge.errors import MergeError
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.merge.io import ShardedWriter
from evomerge.merge.multistage import merge_recipe_file
from evomerge.merge.overlap import BackgroundWriter, read_ahead
from evomerge.recipe import load_recipe


def _recipe(family: dict[str, Path], method: str) -> str:
    params = "{weight: 0.6, density: 0.5}"
    return (
        f"merge_method: {method}\nbase_model: {family['base']}\ndrop_scheme: counter\n"
        f"models:\n  - {{model: {family['a']}, parameters: {params}}}\n"
        f"  - {{model: {family['b']}, parameters: {params}}}\n"
    )


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties"])
def test_thread_counts_write_the_same_bytes(
    family: dict[str, Path], tmp_path: Path, method: str
) -> None:
    recipe = load_recipe(_recipe(family, method))
    files = []
    for threads in (1, 2, 3):
        options = MergeOptions(threads=threads, shard_size=20_000)  # several shards
        out = merge_to_disk(recipe, tmp_path / str(threads), options)
        files.append({p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors"))})
    assert len(files[0]) > 1
    assert files[0] == files[1] == files[2]


def test_threads_must_be_positive_and_nothing_is_written(
    family: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "r.yaml").write_text(_recipe(family, "ties"))
    with pytest.raises(MergeError, match=r"^threads: must be >= 1, got 0$"):
        merge_recipe_file(tmp_path / "r.yaml", tmp_path / "out", MergeOptions(threads=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_read_ahead_stages_the_next_job_while_one_is_used() -> None:
    events: list[str] = []
    for job in read_ahead([1, 2, 3], lambda j: events.append(f"stage {j}")):
        assert f"stage {job}" in events  # a job's inputs are staged before it is used
        events.append(f"use {job}")
    assert events.index("stage 1") < events.index("use 1") < events.index("use 2")
    assert [e for e in events if e.startswith("stage")] == ["stage 1", "stage 2", "stage 3"]


def test_a_write_error_surfaces_in_the_caller(tmp_path: Path) -> None:
    layout = [("a", (2,), torch.float32), ("b", (2,), torch.float32)]
    writer = BackgroundWriter(ShardedWriter(tmp_path, 10**6, layout))
    writer.add("b", torch.zeros(2))  # out of order: the worker's writer refuses it
    with pytest.raises(MergeError, match="expected tensor"):
        writer.add("a", torch.zeros(2))
        writer.finish()
    writer.close()
