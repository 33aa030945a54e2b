"""Opened source checkpoints, kept across merges (the search merges hundreds of times)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from evomerge.merge.architecture import ModelLayout, describe_model, read_config
from evomerge.merge.io import CheckpointReader, resolve_model_dir
from evomerge.merge.methods import TaskVector

# Task vectors kept by a preloading cache, at most this many bytes: the toy family needs
# 23 MB; a pair of 7B fine-tunes would need 56 GB, so past the budget they are recomputed
# per merge (as without a cache) rather than exhausting memory.
TASK_VECTOR_BYTES = 4 * 2**30


class SourceCache:
    """Readers and layouts per model reference; with `preload`, also every tensor read.

    Preloaded tensors stay on the device they were first requested on, so repeated in-memory
    merges read nothing from disk; a preloading cache also keeps each input's task vector
    (x - base, up to `task_vector_bytes`) and DARE's draws, which are the same for every
    candidate of a search. Reuse one cache for one set of source checkpoints; it assumes they
    do not change on disk while it lives.
    """

    def __init__(self, preload: bool = False, task_vector_bytes: int = TASK_VECTOR_BYTES):
        self.preload = preload
        self.task_vector_bytes = task_vector_bytes if preload else 0
        self._dirs: dict[str, Path] = {}
        self._readers: dict[str, CheckpointReader] = {}
        self._layouts: dict[str, ModelLayout] = {}
        self._tensors: dict[tuple[str, str, str], torch.Tensor] = {}
        self._task_vectors: dict[tuple[str, ...], TaskVector] = {}
        self._task_vector_bytes_used = 0
        # DARE's uniform draws, kept with preloaded sources (see sparsify.RandomDraws)
        self.draws: dict[tuple[int, str], torch.Tensor] | None = {} if preload else None

    def directory(self, ref: str) -> Path:
        if ref not in self._dirs:
            self._dirs[ref] = resolve_model_dir(ref)
        return self._dirs[ref]

    def layout(self, ref: str, *, allow_pickle: bool = False) -> ModelLayout:
        """Open `ref` (config and tensor headers only) unless it already is."""
        if ref not in self._layouts:
            directory = self.directory(ref)
            config = read_config(directory, ref)
            reader = CheckpointReader.open(directory, allow_pickle=allow_pickle)
            self._readers[ref] = reader
            self._layouts[ref] = describe_model(ref, config, reader)
        return self._layouts[ref]

    def tensor(self, ref: str, name: str, device: torch.device) -> torch.Tensor:
        """Tensor `name` of model `ref` on `device` (from memory when preloaded)."""
        key = (ref, name, str(device))
        cached = self._tensors.get(key)
        if cached is not None:
            return cached
        tensor = self._readers[ref].read(name).to(device)
        if self.preload:
            # kept for a whole search: its own memory, not a map of a file that may change
            if tensor.device.type == "cpu":
                tensor = tensor.clone()
            self._tensors[key] = tensor
        return tensor

    def task_vector(
        self, key: tuple[str, ...], make: Callable[[], TaskVector]
    ) -> TaskVector | None:
        """The task vector for `key` (inputs, dtypes, device), made and kept on first use
        while the budget lasts (made afresh past it); None when this cache keeps none."""
        kept = self._task_vectors.get(key)
        if kept is not None or self.task_vector_bytes <= 0:
            return kept
        vector = make()
        size = vector.delta.numel() * vector.delta.element_size()
        if self._task_vector_bytes_used + size > self.task_vector_bytes:
            return vector
        self._task_vectors[key] = vector
        self._task_vector_bytes_used += size
        return vector
