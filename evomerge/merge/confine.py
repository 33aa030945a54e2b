"""Confinement: every file read for a model resolves inside that model's root directory.

A model reference resolves to a directory; its root is that directory's real path. A snapshot
of the Hugging Face cache is recognised by what the directory resolves to
(`.../models--org--name/snapshots/<rev>/`, however the user reached it: a symlink
`models/tiny -> hub/models--org--tiny/snapshots/<rev>` included); its files are symlinks into
the repository's `blobs/`, so it has two roots: the snapshot and that `blobs/` (a real
directory, not a link), never the rest of `models--org--name/`. A file is read only when its
real path (symlinks followed) lies inside a root and it is a regular file; it is then opened
component by component from that root with O_NOFOLLOW, so a path swapped for a symlink after
the check fails to open instead of leading outside (TOCTOU).

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
# The deepest nesting of such a JSON file: a model's config nests 3 or 4 levels (a VLM's
# text_config, rope_scaling); the output's config.json is written by a recursive encoder, so a
# config nested ~900 deep would fail after every tensor was written. Checked when read.
MAX_JSON_DEPTH = 64
# The largest file copied out of a model (tokenizer files, chat templates): the largest real
# tokenizer.json files (Gemma's 256k vocabulary) are about 35 MB; past this, not a tokenizer.
MAX_COPY_BYTES = 256 * 2**20
# Suffixes of the files a model loader may read (weights, configs, tokenizers, templates).
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".bin")
# Entries of a model directory looked at before loading it with transformers: a model has a few
# dozen files (a sharded 405B model about 200); a directory of more is not a model.
MAX_CHECKED_ENTRIES = 10_000
INDEX_FILES = ["model.safetensors.index.json", "pytorch_model.bin.index.json"]
_HF_SNAPSHOTS = "snapshots"
_HF_BLOBS = "blobs"
_HF_REPO_PREFIX = "models--"


@dataclass(frozen=True)
class ModelRoot:
    """A model directory and the roots its files must stay inside."""

    directory: Path  # as named (absolute; symlinks not followed)
    roots: tuple[Path, ...]  # real paths: the directory's; a hub snapshot's blobs/ besides

    @property
    def root(self) -> Path:
        """The directory's own real path (the first root)."""
        return self.roots[0]

    @classmethod
    def of(cls, directory: str | Path) -> ModelRoot:
        named = Path(os.path.abspath(directory))
        real = Path(os.path.realpath(named))
        roots = [real]
        repo = real.parent.parent
        if real.parent.name == _HF_SNAPSHOTS and repo.name.startswith(_HF_REPO_PREFIX):
            blobs = repo / _HF_BLOBS  # snapshots/<rev>/x -> ../../blobs/<hash>
            if blobs.is_dir() and not blobs.is_symlink():
                roots.append(blobs)
        return cls(named, tuple(roots))

    def _root_of(self, real: Path) -> Path | None:
        return next((r for r in self.roots if real.is_relative_to(r)), None)

    def resolve(self, name: str | Path) -> Path:
        """The real path of `directory/name`: inside a root, existing, a regular file."""
        path = self.directory / name
        try:
            real = Path(os.path.realpath(path, strict=True))
        except OSError as e:
            raise MergeError(f"{path}: cannot read: {e.strerror}") from None
        if self._root_of(real) is None:
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
        root = self._root_of(real)
        assert root is not None  # resolve checked it
        parts = real.relative_to(root).parts
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
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
            value = json.loads(data)
        except json.JSONDecodeError as e:
            raise MergeError(
                f"{path}: not valid JSON (line {e.lineno}, column {e.colno})"
            ) from None
        except (ValueError, RecursionError) as e:  # bad UTF-8, a 5000-digit number, deep nesting
            raise MergeError(f"{path}: not valid JSON ({type(e).__name__})") from None
        if json_depth(value) > MAX_JSON_DEPTH:
            raise MergeError(
                f"{path}: nested deeper than {MAX_JSON_DEPTH} levels; refused (MAX_JSON_DEPTH)"
            )
        return value

    def copy(self, name: str, target: Path, *, limit: int = MAX_COPY_BYTES) -> None:
        """Copy `name` into the new regular file `target` (never through a link), at most
        `limit` bytes."""
        with self.open(name) as src:
            if os.fstat(src.fileno()).st_size > limit:
                raise MergeError(
                    f"{self.directory / name}: larger than {limit} bytes; refused (MAX_COPY_BYTES)"
                )
            with open(target, "xb") as dst:
                shutil.copyfileobj(src, dst)

    def check_files(self, names: list[str]) -> None:
        """Every file a loader we do not control (transformers) may read resolves inside the
        roots: the directory's model files, those of its subdirectories (chat templates), and
        every shard its index names. At most MAX_CHECKED_ENTRIES entries are looked at."""
        seen = 0
        for top, dirs, files in os.walk(self.directory):
            for entry in sorted(dirs + files):
                seen += 1
                if seen > MAX_CHECKED_ENTRIES:
                    raise MergeError(
                        f"{self.directory}: more than {MAX_CHECKED_ENTRIES} entries; not a model "
                        "directory (MAX_CHECKED_ENTRIES)"
                    )
                relative = Path(top, entry).relative_to(self.directory)
                if entry in dirs and os.path.islink(Path(top, entry)):
                    self._resolve_dir(relative)
                elif entry in files and entry.endswith(MODEL_FILE_SUFFIXES):
                    self.resolve(relative)
        for index in names:
            if self.exists(index):
                for shard in shard_names(self, index):
                    self.resolve(shard)

    def _resolve_dir(self, name: Path) -> None:
        real = Path(os.path.realpath(self.directory / name))
        if self._root_of(real) is None:
            raise MergeError(
                f"{self.directory / name}: resolves outside the model directory {self.root}; "
                "refused (every file of a model must stay inside its directory)"
            )


def json_depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed JSON value (a scalar: 0); no recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


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
