"""Corrupted or truncated safetensors shards: a MergeError that names the file, nothing else."""

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from evomerge.errors import MergeError
from evomerge.merge import merge_to_disk
from evomerge.recipe import parse_recipe
from evomerge_dev.testing import make_tiny_llama


def truncate(at: float) -> Callable[[bytes], bytes]:
    return lambda data: data[: int(len(data) * at)]


def header_length(value: int) -> Callable[[bytes], bytes]:
    return lambda data: struct.pack("<Q", value) + data[8:]


def header(edit: Callable[[dict], object]) -> Callable[[bytes], bytes]:
    def corrupt(data: bytes) -> bytes:
        (n,) = struct.unpack("<Q", data[:8])
        text = json.dumps(edit(json.loads(data[8 : 8 + n]))).encode()
        return struct.pack("<Q", len(text)) + text + data[8 + n :]

    return corrupt


def first_tensor(change: dict) -> Callable[[dict], dict]:
    def edit(h: dict) -> dict:
        name = next(k for k in h if k != "__metadata__")
        h[name] = {**h[name], **change}
        return h

    return edit


def first_tensor_without(key: str) -> Callable[[dict], dict]:
    def edit(h: dict) -> dict:
        name = next(k for k in h if k != "__metadata__")
        del h[name][key]
        return h

    return edit


def header_bytes_garbled(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    return data[:8] + b"\xff" * n + data[8 + n :]


CORRUPTIONS = {
    "empty file": lambda data: b"",
    "cut inside the length": truncate(0.0000001),
    "cut inside the header": lambda data: data[:20],
    "cut inside the data": truncate(0.6),
    "cut one byte short": lambda data: data[:-1],
    "huge header length": header_length(2**63),
    "header longer than file": header_length(10**6),
    "header not JSON": header_bytes_garbled,
    "header a list": header(lambda h: [1, 2]),
    "entry without dtype": header(first_tensor_without("dtype")),
    "unknown dtype": header(first_tensor({"dtype": "Q7"})),
    "offsets past the end": header(first_tensor({"data_offsets": [0, 10**9]})),
    "offsets not matching shape": header(first_tensor({"data_offsets": [0, 4]})),
    "negative offsets": header(first_tensor({"data_offsets": [8, 0]})),
    "shape not a list": header(first_tensor({"shape": "big"})),
    "random bytes": lambda data: bytes((i * 97 + 13) % 256 for i in range(len(data))),
}


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    base = make_tiny_llama(tmp_path / "base", seed=0)
    other = make_tiny_llama(tmp_path / "other", seed=1, base=base, shards=2)
    return base, other


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupted_shard_is_a_merge_error_naming_the_file(models, tmp_path, corruption):
    base, other = models
    shard = sorted(other.glob("*.safetensors"))[-1]
    shard.write_bytes(CORRUPTIONS[corruption](shard.read_bytes()))
    recipe = parse_recipe(
        {
            "merge_method": "linear",
            "models": [
                {"model": str(base), "parameters": {"weight": 0.5}},
                {"model": str(other), "parameters": {"weight": 0.5}},
            ],
        }
    )
    with pytest.raises(MergeError) as info:
        merge_to_disk(recipe, tmp_path / "out")
    assert str(shard) in str(info.value)
    assert not (tmp_path / "out").exists()
