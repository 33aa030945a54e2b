"""Confinement: every file read for a model resolves inside that model's root directory.

A model reference resolves to a directory; its root is that directory, or, for a snapshot of
the Hugging Face cache (`.../models--org--name/snapshots/<rev>/`), the repository folder
`models--org--name/`, because the snapshot's files are symlinks into its `blobs/`. A file is
read only when its real path (symlinks followed) lies inside the root and it is a regular
file; it is then opened component by component from the root with O_NOFOLLOW, so a path
swapped for a symlink after the check fails to open instead of leading outside (TOCTOU).

Hard links cannot be told from ordinary files cheaply (a second name of the same inode looks
like the first); they need write access to the target's filesystem, which a downloaded
archive extracted with a safe filter does not get. They are not detected.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from evomerge.errors import MergeError

# The largest JSON file parsed for a model (config.json, the index, generation_config.json):
# a 405B model's index is about 100 KB and its config 1 KB; past this a file is not a model's.
MAX_JSON_BYTES = 16 * 2**20
INDEX_FILES = ["model.safetensors.index.json", "pytorch_model.bin.index.json"]
_HF_SNAPSHOTS = "snapshots"
_HF_REPO_PREFIX = "models--"


@dataclass(frozen=True)
class ModelRoot:
    """A model directory and the root its files must stay inside."""

    directory: Path  # as named (absolute; symlinks not followed)
    root: Path  # real path

    @classmethod
    def of(cls, directory: str | Path) -> ModelRoot:
        named = Path(os.path.abspath(directory))
        top = named
        if named.parent.name == _HF_SNAPSHOTS and named.parent.parent.name.startswith(
            _HF_REPO_PREFIX
        ):
            top = named.parent.parent  # snapshots/<rev>/x -> ../../blobs/<hash>
        return cls(named, Path(os.path.realpath(top)))

    def resolve(self, name: str | Path) -> Path:
        """The real path of `directory/name`: inside the root, existing, a regular file."""
        path = self.directory / name
        try:
            real = Path(os.path.realpath(path, strict=True))
        except OSError as e:
            raise MergeError(f"{path}: cannot read: {e.strerror}") from None
        if not real.is_relative_to(self.root):
            raise MergeError(
                f"{path}: resolves outside the model directory {self.root}; refused (every "
                "file of a model must stay inside its directory)"
            )
        if not real.is_file():
            raise MergeError(f"{path}: not a regular file; refused")
        return real

    def exists(self, name: str) -> bool:
        """Whether `directory/name` is there at all (a dangling link counts: it is refused)."""
        return os.path.lexists(self.directory / name)

    def open(self, name: str | Path) -> BinaryIO:
        """`name` (relative to the directory, or a path `resolve` returned) opened for reading,
        every component walked from the root without following links."""
        real = self.resolve(name)
        parts = real.relative_to(self.root).parts
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            for part in parts[:-1]:
                step = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                fd, parent = os.open(part, step, dir_fd=fd), fd
                os.close(parent)
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO does not block
            fd, parent = os.open(parts[-1], flags, dir_fd=fd), fd
            os.close(parent)
        except OSError as e:
            raise MergeError(
                f"{self.directory / name}: cannot open inside the model directory "
                f"({e.strerror}; was it replaced by a link?)"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise MergeError(f"{self.directory / name}: not a regular file; refused")
        return os.fdopen(fd, "rb")

    def read_json(self, name: str, *, limit: int = MAX_JSON_BYTES) -> Any:
        """A JSON file of at most `limit` bytes; errors never quote the file's contents."""
        with self.open(name) as f:
            data = f.read(limit + 1)
        path = self.directory / name
        if len(data) > limit:
            raise MergeError(f"{path}: larger than {limit} bytes; refused (MAX_JSON_BYTES)")
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise MergeError(
                f"{path}: not valid JSON (line {e.lineno}, column {e.colno})"
            ) from None
        except (ValueError, RecursionError) as e:  # bad UTF-8, a 5000-digit number, deep nesting
            raise MergeError(f"{path}: not valid JSON ({type(e).__name__})") from None

    def copy(self, name: str, target: Path) -> None:
        """Copy `name` into the new regular file `target` (never through a link)."""
        with self.open(name) as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst)

    def check_files(self, names: list[str]) -> None:
        """Every entry of the directory, and every shard its index names, resolves inside
        the root: for a loader we do not control (transformers), which may read any of them."""
        for entry in sorted(os.listdir(self.directory)):
            if entry.endswith((".json", ".safetensors", ".model", ".txt", ".jinja", ".bin")):
                self.resolve(entry)
        for index in names:
            if self.exists(index):
                for shard in shard_names(self, index):
                    self.resolve(shard)


def shard_names(root: ModelRoot, index: str) -> list[str]:
    """The shard files an index names, once each, in order; the index's shape is checked."""
    data = root.read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in weight_map.items()
    ):
        raise MergeError(
            f"{root.directory / index}: not a valid index file (an object whose weight_map "
            "maps tensor names to shard file names)"
        )
    return list(dict.fromkeys(weight_map.values()))
