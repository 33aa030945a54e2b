"""Sparsification of task vectors (deltas): which entries survive, and how they are rescaled.

- magnitude (TIES): keep the `density` share with the largest |delta|, at least one entry.
- random (DARE): keep each entry with probability `density`, from seeded draws (drops.py's
  counter-based ones, or RandomDraws below for recipes of the `torch_cpu` scheme).
- outliers (breadcrumbs): drop the `gamma` share with the largest |delta| and the smallest ones,
  keeping `density` of the entries.

With `rescale`, survivors are scaled so the L1 norm of the delta is unchanged (mergekit's rule;
for DARE this is 1/density in expectation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from evomerge.merge.blocks import map_blocks
from evomerge.merge.drops import CounterDraws

Tensor = torch.Tensor


class Selection(Protocol):
    """What sparsify_ needs of a tie rule (selection.Selection, which builds on this module)."""

    @property
    def exact(self) -> bool: ...

    @property
    def dtype(self) -> torch.dtype | None: ...

    def largest_of(self, delta: Tensor, k: int) -> Tensor: ...

    def middle_of(self, delta: Tensor, bottom: int, count: int) -> Tensor: ...


def sparsify_(
    method: str,
    delta: Tensor,
    *,
    density: float,
    gamma: float = 0.0,
    rescale: bool = False,
    generator: torch.Generator | RandomDraws | CounterDraws | None = None,
    l1: float | None = None,
    selection: Selection | None = None,
) -> None:
    """In place: zero the dropped entries of `delta`; with `rescale`, restore its L1 norm.

    `l1` is |delta|_1 when the caller already knows it (the search keeps it per source).
    `selection` breaks ties among equal magnitudes (selection.py); None: the threshold rule.
    """
    if density >= 1:
        return
    before = (l1 if l1 is not None else float(delta.abs().sum())) if rescale else None
    if selection is not None and selection.exact and method in ("magnitude", "outliers"):
        _select_exactly_(method, delta, density, gamma, selection)
        _restore_l1_(delta, before)
        return
    if method == "random" and isinstance(generator, RandomDraws | CounterDraws):
        # times a 0/1 float mask: boolean kernels (masked_fill_, where) are 10-40x slower
        # than float ones on CPU; dropped entries become -0.0 where delta < 0 (equal to 0)
        generator.drop_(delta, density)
        _restore_l1_(delta, before)
        return
    if method == "magnitude" and delta.dtype == torch.float32 and density > 0 < delta.numel():
        # the entries magnitude_mask keeps, zeroed in float arithmetic (no bool kernels)
        _trim_(delta, max(1, int(density * delta.numel())))
        _restore_l1_(delta, before)
        return
    if method == "magnitude":
        mask = magnitude_mask(delta, density)
    elif method == "random":
        mask = random_mask(delta, density, generator)
    elif method == "outliers":
        mask = outlier_mask(delta, density, gamma)
    else:
        raise ValueError(f"unknown sparsification {method!r}")
    if mask.dtype == torch.bool:
        delta.masked_fill_(~mask, 0.0)  # as delta * mask, up to the sign of zeros; faster
    else:
        delta.mul_(mask)
    del mask
    _restore_l1_(delta, before)


def _select_exactly_(
    method: str, delta: Tensor, density: float, gamma: float, selection: Selection
) -> None:
    """In place: zero what mergekit's magnitude or outlier selection drops (its tie order)."""
    n = delta.numel()
    if method == "magnitude":
        if density <= 0 or n == 0:
            delta.zero_()  # as magnitude_mask's empty mask (masked_fill_: +0.0)
            return
        k = max(1, int(density * n))
        fast = delta.dtype == torch.float32 and delta.is_contiguous() and selection.dtype is None
        if fast and k < n:
            threshold, missing, equal = kth_largest_ties(delta, k, absolute=True)
            if missing == equal:  # one set, however ties break: no tie straddles the cut
                _trim_at_(delta, threshold, missing)
                return
        mask = selection.largest_of(delta, k)
    else:
        keep_n, top_n = int(density * n), int(gamma * n)
        mask = selection.middle_of(delta, max(0, n - keep_n - top_n), keep_n)
    if method == "magnitude" and delta.dtype == torch.float32:
        delta.mul_(mask.to(delta.dtype))  # as _keep_largest_: a 0/1 float mask
    else:
        delta.masked_fill_(~mask, 0.0)


def _restore_l1_(delta: Tensor, before: float | None) -> None:
    """With `before` (the L1 norm before dropping), scale the survivors back to it."""
    if before is None:
        return
    after = float(delta.abs().sum())
    # Nearly empty task vectors are left unscaled rather than blown up (as mergekit).
    # (Python floats: the quotient of two float32 norms, rounded to float32 by mul_, equals
    # the float32 quotient, since double has more than 2 x 24 + 2 bits.)
    if before >= 1e-7 and after >= 1e-7:
        delta.mul_(before / after)


def magnitude_mask(delta: Tensor, density: float) -> Tensor:
    """The `density` share of entries with the largest |delta| (at least one)."""
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    k = max(1, int(density * delta.numel()))
    return largest_mask(delta.abs(), k)


class RandomDraws:
    """Seeded uniform draws for one input of one tensor, U ~ [0, 1) of the tensor's shape.

    DARE keeps an entry iff U < density. The draws depend only on the seed (derived from the
    recipe seed, tensor name and input index), not on the density, nor on the device that
    merges: they always come from torch's CPU generator (CUDA's draws other numbers), so a
    recipe merges to the same model on any device. This is the `torch_cpu` drop scheme (recipes
    written before the counter-based one, drops.py); nothing keeps the draws: they are drawn
    again per merge (block by block on CPU). A `store` keeps them (float16, 2 bytes an entry;
    densities resolve to ~1e-3) for whoever passes one.
    """

    def __init__(self, seed: int, store: dict[tuple[int, str], Tensor] | None = None) -> None:
        self.seed = seed
        self.store = store

    def uniform(self, like: Tensor) -> Tensor:
        key = (self.seed, str(like.device))
        cached = self.store.get(key) if self.store is not None else None
        if cached is not None and cached.shape == like.shape:
            return cached
        gen = torch.Generator()  # CPU: the same draws whatever device merges
        gen.manual_seed(self.seed)
        draws = torch.rand(like.shape, generator=gen).to(torch.float16).to(like.device)
        if self.store is not None:
            self.store[key] = draws
        return draws

    def drop_(self, delta: Tensor, density: float) -> None:
        """In place: `delta` times keep(delta, density), the dropped entries zeroed.

        Without a store, on CPU, the draws are made one block at a time from one generator:
        the same numbers as one whole draw (torch's CPU generator is sequential), with no
        whole-tensor draws or mask in memory.
        """
        if self.store is not None or delta.device.type != "cpu" or not delta.is_contiguous():
            delta.mul_(self.keep(delta, density))
            return
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        for block in delta.view(-1).split(BLOCK):
            block.mul_(_keep_mask(torch.rand(block.shape, generator=gen), density, block.dtype))

    def keep(self, like: Tensor, density: float) -> Tensor:
        """1.0 where U < density, else 0.0 (float32, or float64 for float64 `like`).

        The same set as the float16 comparison U < density: with T the smallest float16 draw
        value the comparison drops, (T - U) * 2^24 is an exact integer (both are multiples of
        2^-24 in [0, 1]), >= 1 exactly where U < T, so clamping it to [0, 1] is the mask.
        """
        return _keep_mask(self.uniform(like), density, like.dtype)


BLOCK = 1 << 20  # draws per block when drawing without a store: 4 MB of float32


def _keep_mask(draws: Tensor, density: float, like: torch.dtype) -> Tensor:
    """RandomDraws.keep for these draws (float32 draws are rounded to float16 first)."""
    mask = draws.to(torch.float16).to(torch.float64 if like == torch.float64 else torch.float32)
    return mask.mul_(-(2.0**24)).add_(_drop_threshold(density) * 2.0**24).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=1024)
def _drop_threshold(density: float) -> float:
    """The smallest float16 value in [0, 1) that `U >= density` (float16 U) drops; 1.0 if none.

    Found by running that very comparison on every float16 value in [0, 1) (15,360 of them,
    ascending), so the masks keep torch's rounding of `density` exactly.
    """
    grid = torch.arange(0x3C00, dtype=torch.int16).view(torch.float16)
    kept = int(torch.count_nonzero(~(grid >= density)))
    return float(grid[kept]) if kept < grid.numel() else 1.0


def random_mask(
    delta: Tensor, density: float, generator: torch.Generator | RandomDraws | CounterDraws | None
) -> Tensor:
    if isinstance(generator, RandomDraws | CounterDraws):
        return generator.keep(delta, density) > 0
    probabilities = torch.full_like(delta, density)
    return torch.bernoulli(probabilities, generator=generator)


def outlier_mask(delta: Tensor, density: float, gamma: float) -> Tensor:
    """Rank entries by |delta|; keep ranks [n_bottom, n_bottom + n_keep) from the smallest."""
    n = delta.numel()
    keep_n = int(density * n)
    top_n = int(gamma * n)
    # Fewer outliers are dropped when needed to keep `density` of the entries.
    bottom_n = max(0, n - keep_n - top_n)
    magnitude = delta.abs()
    mask = largest_mask(magnitude, n - bottom_n)
    mask &= ~largest_mask(magnitude, n - bottom_n - keep_n)
    return mask


def largest_mask(values: Tensor, k: int) -> Tensor:
    """Exactly the k largest of non-negative `values` (ties at the threshold: first in order).

    A radix select on float32 bit patterns (which order like the values when non-negative)
    needs two small histograms instead of a sort: about one extra tensor of memory, where
    torch.topk needs five.
    """
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if values.dtype != torch.float32:
        mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
        mask[torch.topk(values.reshape(-1), k, sorted=False).indices] = True
        return mask.reshape(values.shape)
    threshold, missing = _kth_largest(values, k)
    mask = values > threshold
    if missing > 0:
        tied = (values == threshold).reshape(-1).nonzero().squeeze(1)[:missing]
        mask.view(-1)[tied] = True
    return mask


def _keep_largest_(delta: Tensor, values: Tensor, k: int) -> None:
    """In place: delta times largest_mask(values, k) (float32 values), as a 0/1 float mask."""
    threshold, missing = _kth_largest(values, k)
    mask = values.sub(threshold).sign_().clamp_(min=0)  # 1 where values > threshold
    if missing > 0:
        mask.view(-1)[_first_ties(values, threshold, missing)] = 1.0
    delta.mul_(mask)


def _trim_(delta: Tensor, k: int) -> None:
    """_keep_largest_(delta, |delta|, k), the same bytes, block by block: |delta| is never
    made whole, and the mask's passes (abs, sub, sign, clamp, mul) run while a block is in
    cache, the blocks spread over threads (blocks.py)."""
    if not delta.is_contiguous():
        _keep_largest_(delta, delta.abs(), k)
        return
    threshold, missing, _ = kth_largest_ties(delta, k, absolute=True)
    _trim_at_(delta, threshold, missing)


def _trim_at_(delta: Tensor, threshold: Tensor, missing: int) -> None:
    """_trim_ once the k-th largest |delta| and the ties to keep are known (contiguous)."""
    flat = delta.view(-1)
    tied = _first_ties(flat, threshold, missing, absolute=True) if missing > 0 else None
    kept = flat[tied] if tied is not None else None  # times a mask of 1.0: themselves

    def mask_block(i: int) -> None:
        block = flat[i * _MASK_BLOCK : (i + 1) * _MASK_BLOCK]
        block.mul_(block.abs().sub_(threshold).sign_().clamp_(min=0))  # 1 where |x| > t

    map_blocks(-(-flat.numel() // _MASK_BLOCK), mask_block, delta.device)
    if tied is not None and kept is not None:
        flat[tied] = kept


# Entries per block of the trim's mask pass: 256 KB of float32 and its |x| stay in L2.
_MASK_BLOCK = 1 << 16


def _first_ties(values: Tensor, threshold: Tensor, count: int, *, absolute: bool = False) -> Tensor:
    """Flat indices of the first `count` entries equal to `threshold` (|entries| with
    `absolute`), scanning row blocks in order and stopping once found (rather than one
    whole-tensor comparison and nonzero)."""
    found, flat = [], values.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK]
        hits = ((chunk.abs() if absolute else chunk) == threshold).nonzero().squeeze(1)
        hits = hits[:count] + start
        found.append(hits)
        count -= hits.numel()
        if count <= 0:
            break
    return torch.cat(found)


_CHUNK = 1 << 22  # elements per histogram pass: bounds the int64 scratch of bincount


def _kth_largest(values: Tensor, k: int) -> tuple[Tensor, int]:
    """The k-th largest value, and how many entries equal to it are among the k largest."""
    threshold, tied, _ = kth_largest_ties(values, k)
    return threshold, tied


def kth_largest_ties(values: Tensor, k: int, *, absolute: bool = False) -> tuple[Tensor, int, int]:
    """_kth_largest of non-negative float32 `values` (1 <= k <= numel; with `absolute`, of
    |values|, never made whole), and how many entries equal the k-th largest in all: the k
    largest are one set, whatever breaks ties, iff both counts agree."""
    chunks = values.reshape(-1).view(torch.int32).split(_CHUNK)
    high = (lambda c: (c & 0x7FFFFFFF) >> 16) if absolute else (lambda c: c >> 16)
    bucket, rank = _select_bucket(_histogram(chunks, high), k)
    # low 16 bits of the entries in that bucket, the others clamped into two end bins
    # (dropped): integer arithmetic instead of a boolean selection
    offset = bucket << 16
    low = (lambda c: (c & 0x7FFFFFFF).sub_(offset)) if absolute else (lambda c: c - offset)
    low_counts = _histogram(chunks, lambda c: low(c).clamp_(-1, 1 << 16).add_(1), (1 << 16) + 2)
    low_counts = low_counts[1:-1]
    sub_bucket, tied = _select_bucket(low_counts, rank)
    pattern = torch.tensor([(bucket << 16) | sub_bucket], dtype=torch.int32)
    return pattern.view(torch.float32)[0].to(values.device), tied, int(low_counts[sub_bucket])


def _histogram(
    chunks: Sequence[Tensor], transform: Callable[[Tensor], Tensor], bins: int = 1 << 16
) -> Tensor:
    """Counts of transform(chunk)'s values in [0, bins), summed over the chunks (the chunks
    spread over threads: blocks.py; integer sums, so the same counts for any split)."""
    if not chunks:
        raise ValueError("empty input")

    def count(i: int) -> Tensor:
        return torch.bincount(transform(chunks[i]), minlength=bins)

    parts = map_blocks(len(chunks), count, chunks[0].device)
    counts = parts[0]
    for part in parts[1:]:
        counts.add_(part)
    return counts


def _select_bucket(counts: Tensor, k: int) -> tuple[int, int]:
    """The bucket holding the k-th largest element, and that element's rank inside it."""
    at_or_above = counts.flip(0).cumsum(0).flip(0)  # [b]: elements in buckets >= b
    bucket = int((at_or_above >= k).nonzero().max())
    above = int(at_or_above[bucket + 1]) if bucket + 1 < counts.numel() else 0
    return bucket, k - above
