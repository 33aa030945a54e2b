"""Checkpoint I/O: the streaming writer's files are plain safetensors; the lazy reader."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.errors import MergeError
from evomerge.merge.io import CheckpointReader, ShardedWriter
from evomerge_dev.testing import make_tiny_llama


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(10, 10, generator=gen),
        "big": torch.randn(100, 30, generator=gen).to(torch.bfloat16),
        "c": torch.arange(7, dtype=torch.int64),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


def test_writer_streams_plain_safetensors_shards(tmp_path: Path) -> None:
    tensors = _tensors()
    layout = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    writer = ShardedWriter(tmp_path, 1000, layout)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.finish()
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    loaded: dict[str, torch.Tensor] = {}
    for file in files:
        loaded.update(load_file(tmp_path / file))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["big"] == files[1]  # larger than a shard: a shard of its own
    reader = CheckpointReader.open(tmp_path)
    assert all(torch.equal(reader.read(k), v) for k, v in tensors.items())


def test_writer_checks_the_declared_layout(tmp_path: Path) -> None:
    writer = ShardedWriter(tmp_path, 10**6, [("a", (2,), torch.float32)])
    with pytest.raises(MergeError, match="expected tensor"):
        writer.add("a", torch.zeros(3))
    with pytest.raises(MergeError, match="never written"):
        ShardedWriter(tmp_path, 10**6, [("a", (2,), torch.float32)]).finish()


def test_reader_follows_the_index_of_a_sharded_checkpoint(tmp_path: Path) -> None:
    one = make_tiny_llama(tmp_path / "one", seed=3)
    three = make_tiny_llama(tmp_path / "three", seed=3, shards=3)
    assert len(list(three.glob("*.safetensors"))) == 3
    a, b = CheckpointReader.open(one), CheckpointReader.open(three)
    assert sorted(a.names()) == sorted(b.names())
    assert all(torch.equal(a.read(n), b.read(n)) for n in a.names())


def test_make_tiny_llama_is_deterministic(tmp_path: Path) -> None:
    first = make_tiny_llama(tmp_path / "x", seed=5, shards=2)
    second = make_tiny_llama(tmp_path / "y", seed=5, shards=2)
    for file in first.iterdir():
        assert file.read_bytes() == (second / file.name).read_bytes(), file.name
