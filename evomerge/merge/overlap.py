"""A merge to disk in three overlapping stages: read ahead, compute, write behind.

While the merge computes tensor k (on `threads` torch threads), one worker thread maps and
faults in the inputs of tensor k + 1 (from the page cache, or from disk when they are not
there) and another writes tensor k - 1 to its shard. torch's kernels and file writes release
the GIL, so the stages run in parallel; the floor of a merge is then the slowest stage, not
their sum. At most WRITE_DEPTH merged tensors wait for the writer, so memory grows by a few
output tensors, not by the model.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from evomerge.errors import MergeError
from evomerge.merge.io import ShardedWriter

# Merged tensors queued for the writer: two keep it busy while the next one is computed;
# each one more costs a merged tensor of memory (up to 0.5 GB for a 7B model's embeddings).
WRITE_DEPTH = 2
PAGE = 4096  # bytes; one read per page faults a mapped tensor in

Job = TypeVar("Job")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` torch threads (None: leave torch's setting), then restore it."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise MergeError(f"threads: must be >= 1, got {threads}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fault_in(tensor: torch.Tensor) -> torch.Tensor:
    """Touch one byte per page of a contiguous CPU tensor (a file map: the page cache or the
    disk fills it now, in this thread, rather than in the merge's kernels); returns it."""
    if tensor.device.type == "cpu" and tensor.is_contiguous() and tensor.numel():
        flat = tensor.reshape(-1).view(torch.uint8)
        flat[::PAGE].max()
    return tensor


def read_ahead(jobs: Sequence[Job], stage: Callable[[Job], object]) -> Iterator[Job]:
    """Yield `jobs` in order; while the caller works on one, `stage(next job)` runs in a
    worker thread (the caller's reads of that job then find its inputs staged)."""
    with ThreadPoolExecutor(1, thread_name_prefix="evomerge-read") as pool:
        if jobs:
            stage(jobs[0])
        for k, job in enumerate(jobs):
            staged = pool.submit(stage, jobs[k + 1]) if k + 1 < len(jobs) else None
            yield job
            if staged is not None:
                staged.result()


class BackgroundWriter:
    """Feeds a ShardedWriter from a worker thread, in order; errors surface in the caller."""

    def __init__(self, writer: ShardedWriter, depth: int = WRITE_DEPTH) -> None:
        self.writer = writer
        self._queue: queue.Queue[tuple[str, torch.Tensor] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="evomerge-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after an error, drain the queue without writing
                try:
                    self.writer.add(*item)
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self._raise()
        self._queue.put((name, tensor))

    def finish(self) -> list[str]:
        """Wait for every queued tensor, then close the shards (ShardedWriter.finish)."""
        self.close()
        self._raise()
        return self.writer.finish()

    def close(self) -> None:
        """Stop the worker (idempotent; pending tensors are written first)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
