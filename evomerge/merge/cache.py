"""Opened source checkpoints, kept across merges (the search merges hundreds of times).

Memory model of a search (README, "Memory"): source tensors are never copied whole into the
process. On the CPU each merge maps the tensors it reads from the files (the page cache holds
them between candidates, and gives them back when memory is short: reading then streams from
disk); on a GPU, copies on the device are kept up to `device_bytes`, past which tensors are
read from the maps again per merge. Task vectors are kept up to `task_vector_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from evomerge.merge.architecture import ModelLayout, describe_model, read_config
from evomerge.merge.io import CheckpointReader, resolve_model_dir
from evomerge.merge.lora import open_source, split_adapter
from evomerge.merge.methods import TaskVector
from evomerge.merge.overlap import fault_in

# Task vectors kept by a preloading cache, at most this many bytes. A kept vector saves one
# subtraction and one L1 sum per source and candidate (a few percent of a candidate); it costs
# resident memory, which a search keeps within one model + 2 GB at 1B parameters (README,
# "Memory of a search"): imports (0.2 GB) and a merge's working set (N + 3 float32 copies of the
# largest tensor, 1.6 GB at a 32000 x 2048 embedding) leave about this much. The toy family's
# vectors (23 MB) all fit; past the budget, vectors are computed per merge.
TASK_VECTOR_BYTES = 256 * 2**20
# Source tensors kept on a GPU merge device: unbounded by default, as the paper's setting is
# sized for it (four 7B models in bf16, 58 GB, beside the evaluator on one 141 GB H200); a
# smaller budget trades re-reads over PCIe for device memory.
DEVICE_BYTES: int | None = None


class SourceCache:
    """Readers and layouts per model reference; with `preload`, what a search reuses.

    A preloading cache (the search's) keeps each input's task vector (x - base, up to
    `task_vector_bytes`) and, on a non-CPU device, the source tensors moved there (up to
    `device_bytes`; None: no limit). CPU tensors are always memory maps of the files, read
    again per merge through the page cache, never copies. Reuse one cache for one set of
    source checkpoints; it assumes they do not change on disk while it lives.
    """

    def __init__(
        self,
        preload: bool = False,
        task_vector_bytes: int = TASK_VECTOR_BYTES,
        device_bytes: int | None = DEVICE_BYTES,
    ):
        self.preload = preload
        self.task_vector_bytes = task_vector_bytes if preload else 0
        self.device_bytes = device_bytes
        self._dirs: dict[str, Path] = {}
        self._readers: dict[str, CheckpointReader] = {}
        self._layouts: dict[str, ModelLayout] = {}
        self._tensors: dict[tuple[str, str, str], torch.Tensor] = {}
        self._staged: dict[tuple[str, str, str], torch.Tensor] = {}  # see `stage`
        self._device_bytes_used = 0
        self._task_vectors: dict[tuple[str, ...], TaskVector] = {}
        self._task_vector_bytes_used = 0

    def directory(self, ref: str) -> Path:
        """The checkpoint directory of `ref` (BASE's, for a BASE+ADAPTER LoRA source)."""
        if ref not in self._dirs:
            self._dirs[ref] = resolve_model_dir(split_adapter(ref)[0])
        return self._dirs[ref]

    def layout(self, ref: str, *, allow_pickle: bool = False) -> ModelLayout:
        """Open `ref` (config and tensor headers only) unless it already is."""
        if ref not in self._layouts:
            directory = self.directory(ref)
            config = read_config(directory, ref)
            reader = open_source(ref, directory, allow_pickle=allow_pickle)
            self._readers[ref] = reader
            self._layouts[ref] = describe_model(ref, config, reader)
        return self._layouts[ref]

    def tensor(self, ref: str, name: str, device: torch.device) -> torch.Tensor:
        """Tensor `name` of model `ref` on `device`: a map of the file on the CPU, a kept
        copy on another device while the budget lasts."""
        key = (ref, name, str(device))
        cached = self._tensors.get(key)
        if cached is not None:
            return cached
        staged = self._staged.pop(key, None)
        if staged is not None:
            return staged
        tensor = self._readers[ref].read(name).to(device)
        if self.preload and tensor.device.type != "cpu":
            size = tensor.numel() * tensor.element_size()
            if self.device_bytes is None or self._device_bytes_used + size <= self.device_bytes:
                self._tensors[key] = tensor
                self._device_bytes_used += size
        return tensor

    def stage(self, ref: str, name: str, device: torch.device) -> None:
        """Map tensor `name` of `ref` and fault its pages in now (a read-ahead thread calls
        this for the next tensor of a merge); the next `tensor` call for it takes it."""
        key = (ref, name, str(device))
        if device.type == "cpu" and key not in self._tensors:
            self._staged[key] = fault_in(self._readers[ref].read(name))

    def task_vectors(
        self, keys: Sequence[tuple[str, ...]], make: Callable[[int], TaskVector], nbytes: int
    ) -> tuple[TaskVector, ...]:
        """The task vectors of one job's inputs (`keys`: inputs, dtypes, device; `nbytes`
        each), made by `make(i)` and kept on first use when all of them fit the budget; ()
        otherwise: the merge then subtracts itself, as without a cache, and holds no second
        copy of the deltas."""
        missing = [i for i, key in enumerate(keys) if key not in self._task_vectors]
        if self._task_vector_bytes_used + len(missing) * nbytes > self.task_vector_bytes:
            return ()
        for i in missing:
            self._task_vectors[keys[i]] = make(i)
            self._task_vector_bytes_used += nbytes
        return tuple(self._task_vectors[key] for key in keys)
