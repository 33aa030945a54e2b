"""Checkpoint I/O: a lazy per-tensor reader and a streaming sharded safetensors writer.

The reader parses safetensors headers (through model.safetensors.index.json when sharded) and
maps one tensor's bytes on request (a private map of that tensor's range only, unmapped when
the tensor is freed), so resident memory holds only the tensors in use, and a tensor in the
page cache is neither zero-filled nor copied before its first use. Pickle checkpoints (`pytorch_model*.bin`) are read only
with allow_pickle, through torch.load(weights_only=True, mmap=True).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from evomerge.errors import MergeError, preview, preview_key
from evomerge.merge.confine import ModelRoot, shard_names

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class _Location:
    file: Path
    start: int  # absolute byte offset in the file
    end: int


def resolve_model_dir(ref: str) -> Path:
    """A local directory as is; an `org/name` that is not one is fetched from the Hub."""
    try:
        path = Path(ref).expanduser()
        is_dir, exists = path.is_dir(), path.exists()
    except (RuntimeError, ValueError, OSError) as e:  # `~nobody/x`, a NUL byte, a long name
        raise MergeError(f"model {preview(ref)}: not a usable path ({e})") from None
    if is_dir:
        return path
    if exists:
        raise MergeError(f"model {preview(ref)}: is a file; give the checkpoint's directory")
    if not _HUB_ID.fullmatch(ref):
        raise MergeError(f"model {preview(ref)}: no such directory")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.bin"]
        return Path(snapshot_download(ref, allow_patterns=patterns))
    except Exception as e:  # any Hub failure (offline, 404, auth) is the same user error
        raise MergeError(
            f"model {preview(ref)}: not a local directory, and fetching it from the Hub failed: {e}"
        ) from None


class CheckpointReader:
    """Tensor names, shapes and dtypes of one checkpoint; reads one tensor at a time."""

    def __init__(
        self, directory: Path, locations: dict[str, _Location], infos: dict[str, TensorInfo]
    ):
        self.directory = directory
        self.root = ModelRoot.of(directory)  # every file read resolves inside it
        self._locations = locations
        self._infos = infos
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, directory: Path, *, allow_pickle: bool = False) -> CheckpointReader:
        root = ModelRoot.of(directory)
        return cls.open_files(directory, _weight_files(root), allow_pickle=allow_pickle)

    @classmethod
    def open_files(
        cls, directory: Path, files: list[Path], *, allow_pickle: bool = False
    ) -> CheckpointReader:
        """The tensors of the given weight files of `directory` (e.g. a PEFT adapter's), each
        resolved inside the directory's root."""
        root = ModelRoot.of(directory)
        files = [root.resolve(f) for f in files]
        if files[0].suffix == ".bin":
            if not allow_pickle:
                raise MergeError(
                    f"{directory}: only pickle checkpoints ({files[0].name}) found; they can run "
                    "code when loaded. Convert to safetensors, or pass --allow-pickle"
                )
            return cls._open_pickled(directory, files)
        locations: dict[str, _Location] = {}
        infos: dict[str, TensorInfo] = {}
        for file in files:
            for name, (loc, info) in _read_header(root, file).items():
                locations[name], infos[name] = loc, info
        return cls(directory, locations, infos)

    @classmethod
    def _open_pickled(cls, directory: Path, files: list[Path]) -> CheckpointReader:
        reader = cls(directory, {}, {})
        for file in files:  # real paths inside the root (torch.load needs a file name)
            state = _torch_load(file)
            reader._pickled[file] = state
            for name, tensor in state.items():
                reader._locations[name] = _Location(file, 0, 0)
                reader._infos[name] = TensorInfo(tuple(tensor.shape), tensor.dtype)
        return reader

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name` as a new CPU tensor (its own memory, nothing else loaded)."""
        loc, info = self._locations[name], self._infos[name]
        if loc.file in self._pickled:
            return self._pickled[loc.file][name].clone()
        if loc.end == loc.start:
            return torch.empty(info.shape, dtype=info.dtype)
        start = loc.start - loc.start % mmap.ALLOCATIONGRANULARITY  # maps start on a page
        with self.root.open(loc.file) as f:
            if os.fstat(f.fileno()).st_size < loc.end:
                raise MergeError(f"{loc.file}: truncated while reading tensor {name}")
            # copy-on-write: writes to the tensor stay in this process, never in the file
            mapped = mmap.mmap(f.fileno(), loc.end - start, offset=start, access=mmap.ACCESS_COPY)
        data = memoryview(mapped)[loc.start - start :]
        return torch.frombuffer(data, dtype=info.dtype).reshape(info.shape)


def _weight_files(root: ModelRoot) -> list[Path]:
    """The real paths of the weight files, each inside the model's root (see confine.py)."""
    directory = root.directory
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if root.exists(index_name):
            names = shard_names(root, index_name)
            missing = [n for n in names if not root.exists(n)]
            if missing:
                raise MergeError(
                    f"{directory / index_name}: lists shard files that do not exist: "
                    f"{preview(missing)}"
                )
            return [root.resolve(n) for n in names]
        if root.exists(single):
            return [root.resolve(single)]
    found = sorted(directory.glob("*.safetensors"))
    if found:
        return [root.resolve(f.name) for f in found]
    raise MergeError(f"{directory}: no model.safetensors(.index.json) or pytorch_model.bin found")


# The longest safetensors header read, the reference implementation's limit (safetensors'
# MAX_HEADER_SIZE, 100 MB): a header holds a few hundred bytes per tensor, so even a model of
# 100,000 tensors needs under 20 MB; a longer one is refused before it is read.
MAX_HEADER_BYTES = 100_000_000


def _read_header(root: ModelRoot, file: Path) -> dict[str, tuple[_Location, TensorInfo]]:
    """Every tensor's place and type from a safetensors header; the file's bytes are never
    quoted in an error (a shard named by a hostile index may be any file)."""
    with root.open(file) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise ValueError(
                    f"header length over {MAX_HEADER_BYTES} bytes, the safetensors limit"
                )
            if length > size - 8:
                raise ValueError(f"header length exceeds the file's {size} bytes")
            header = json.loads(f.read(length))
        except json.JSONDecodeError as e:
            raise MergeError(
                f"{file}: not a readable safetensors file (header is not JSON at character {e.pos})"
            ) from None
        except (OSError, ValueError, RecursionError) as e:
            reason = str(e) if type(e) is ValueError else type(e).__name__
            raise MergeError(f"{file}: not a readable safetensors file ({reason})") from None
    if not isinstance(header, dict):
        raise MergeError(f"{file}: not a readable safetensors file (header is not a mapping)")
    data_start = 8 + length
    return {
        name: _header_entry(name, entry, data_start, size, file)
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _header_entry(
    name: str, entry: Any, data_start: int, size: int, file: Path
) -> tuple[_Location, TensorInfo]:
    """One tensor's header entry, checked against its dtype, shape and the file's length."""
    tensor = f"tensor {preview_key(name)}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _unreadable(file, f"{tensor}: needs exactly dtype, shape and data_offsets")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
        raise MergeError(f"{file}: {tensor} has unsupported dtype {preview(dtype_name)}")
    if not _naturals(shape):
        raise _unreadable(file, f"{tensor}: shape must be a list of non-negative integers")
    if not _naturals(offsets) or len(offsets) != 2:
        raise _unreadable(file, f"{tensor}: data_offsets must be two non-negative integers")
    dtype = SAFETENSORS_DTYPES[dtype_name]
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if not begin <= end or end - begin != numel * dtype.itemsize:
        detail = f"offsets {preview(offsets)} do not fit shape {preview(shape)}"
        raise _unreadable(file, f"{tensor}: {detail}")
    if data_start + end > size:
        raise _unreadable(file, f"truncated: {tensor} ends at byte {data_start + end} of {size}")
    return _Location(file, data_start + begin, data_start + end), TensorInfo(tuple(shape), dtype)


def _unreadable(file: Path, detail: str) -> MergeError:
    return MergeError(f"{file}: not a readable safetensors file ({detail})")


def _naturals(value: Any) -> bool:
    """A list of non-negative ints (not bools, not floats: a float shape is refused, not
    truncated), as the safetensors format defines shapes and offsets."""
    return isinstance(value, list) and all(type(x) is int and 0 <= x < 2**63 for x in value)


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many types for a bad pickle
        raise MergeError(f"{file}: cannot load pickle checkpoint ({e})") from None
    if not isinstance(state, dict):
        raise MergeError(f"{file}: expected a state dict, got {type(state).__name__}")
    return state


class ShardedWriter:
    """Streams tensors straight into safetensors shards of at most `shard_size` bytes.

    The layout (name, shape, dtype of every tensor, in writing order) is known before the first
    tensor exists, so shards are assigned up front, each shard's header is written when it is
    opened, and every tensor goes to disk as it arrives: memory holds one tensor, whatever the
    shard size. A tensor larger than `shard_size` gets a shard of its own.
    """

    def __init__(self, directory: Path, shard_size: int, layout: Sequence[TensorLayout]):
        if shard_size <= 0:
            raise MergeError(f"shard_size: must be positive, got {shard_size}")
        self.directory = directory
        self._shards = _assign_shards(layout, shard_size)
        n = len(self._shards)
        self.file_names = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._order = [entry for shard in self._shards for entry in shard]
        self._written = 0
        self._file: BinaryIO | None = None
        self.total_size = sum(_nbytes(e) for e in self._order)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._written >= len(self._order):
            raise MergeError(f"writer: tensor {name} is not in the output layout")
        entry = self._order[self._written]
        if (name, tuple(tensor.shape), tensor.dtype) != entry:
            got = (name, tuple(tensor.shape), tensor.dtype)
            raise MergeError(f"writer: expected tensor {entry}, got {got}")
        if not is_finite(tensor):  # e.g. lambda, scale, weight or lora_alpha of 1e308
            raise MergeError(f"{name}: the merged tensor holds inf or NaN (a parameter overflows?)")
        shard = self._shard_of(self._written)
        if self._shards[shard][0] is entry:
            self._open(shard)
        assert self._file is not None  # opened with the shard's first tensor, just above
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(data.numpy().data)
        self._written += 1

    def _shard_of(self, position: int) -> int:
        for i, shard in enumerate(self._shards):
            if position < len(shard):
                return i
            position -= len(shard)
        raise IndexError(position)

    def _open(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.directory / self.file_names[shard], "wb")  # noqa: SIM115
        self._file.write(_header(self._shards[shard]))

    def finish(self) -> list[str]:
        """Close the last shard and write the index (when sharded); returns the file names."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._written != len(self._order):
            missing = [e[0] for e in self._order[self._written :]]
            raise MergeError(f"writer: {len(missing)} tensors never written, e.g. {missing[:3]}")
        if len(self._shards) > 1:
            weight_map = {
                entry[0]: self.file_names[i]
                for i, shard in enumerate(self._shards)
                for entry in shard
            }
            index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
            text = json.dumps(index, indent=2, sort_keys=True) + "\n"
            (self.directory / "model.safetensors.index.json").write_text(text)
        return list(self.file_names)


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite: one sum settles the usual case (inf and NaN propagate;
    float16 sums accumulate in float32, as theirs overflow at 65504)."""
    if not tensor.is_floating_point():
        return True
    total = tensor.sum(dtype=torch.float32) if tensor.dtype == torch.float16 else tensor.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(tensor).all())


TensorLayout = tuple[str, tuple[int, ...], torch.dtype]
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def _nbytes(entry: TensorLayout) -> int:
    return math.prod(entry[1]) * entry[2].itemsize


def _assign_shards(layout: Sequence[TensorLayout], shard_size: int) -> list[list[TensorLayout]]:
    shards: list[list[TensorLayout]] = [[]]
    size = 0
    for entry in layout:
        nbytes = _nbytes(entry)
        if shards[-1] and size + nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def _header(entries: Sequence[TensorLayout]) -> bytes:
    """The safetensors header (length-prefixed JSON, padded to 8 bytes) for tensors in order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        end = offset + _nbytes((name, shape, dtype))
        header[name] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def parse_size(text: str | int) -> int:
    """`5GB`, `500MB`, `1.5G`, `2000000` -> bytes (decimal units, as mergekit)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not match:
        raise MergeError(
            f"shard size: expected e.g. 5GB, 500MB or a byte count, got {preview(text)}"
        )
    unit = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[match.group(2)]
    return int(float(match.group(1)) * unit)
