"""Work split across threads by blocks, for the loops that run many small torch ops per block.

Each of T Python threads (T = torch's thread count) runs whole blocks with one torch thread,
instead of every small op being split T ways: an OpenMP barrier per op, where one descheduled
thread stalls every op (measured on a busy 2-core machine: the counter drops 0.15 s at 1
thread, 5.8 s at 2). torch releases the GIL inside its ops, so blocks of a few hundred KB keep
the threads busy. Blocks write disjoint slices, so the result does not depend on T.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
# One block-parallel section at a time sets torch's thread count (a process-wide setting that
# new threads start from).
_LOCK = threading.Lock()


def map_blocks(count: int, fn: Callable[[int], T], device: torch.device | None = None) -> list[T]:
    """[fn(0), ..., fn(count - 1)], the calls spread over torch's thread count of Python
    threads, each running torch ops on one thread (in order on one thread when that count is
    1, for one block, or off the CPU)."""
    threads = torch.get_num_threads()
    if threads <= 1 or count <= 1 or (device is not None and device.type != "cpu"):
        return [fn(i) for i in range(count)]
    with _LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the workers, new threads, start from it
        try:
            with ThreadPoolExecutor(min(threads, count)) as pool:
                return list(pool.map(fn, range(count)))
        finally:
            torch.set_num_threads(threads)
