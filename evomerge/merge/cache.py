"""Opened source checkpoints, kept across merges (the search merges hundreds of times)."""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge.merge.architecture import ModelLayout, describe_model, read_config
from evomerge.merge.io import CheckpointReader, resolve_model_dir


class SourceCache:
    """Readers and layouts per model reference; with `preload`, also every tensor read.

    Preloaded tensors stay on the device they were first requested on, so repeated in-memory
    merges read nothing from disk. Reuse one cache for one set of source checkpoints; it
    assumes they do not change on disk while it lives.
    """

    def __init__(self, preload: bool = False):
        self.preload = preload
        self._dirs: dict[str, Path] = {}
        self._readers: dict[str, CheckpointReader] = {}
        self._layouts: dict[str, ModelLayout] = {}
        self._tensors: dict[tuple[str, str, str], torch.Tensor] = {}
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
            self._tensors[key] = tensor
        return tensor
