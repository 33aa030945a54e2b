"""Counter-based random drops for DARE and DELLA: a keyed hash of the entry index, no state.

Each entry's draw is a pure function of (seed, tensor name, input position, entry index):

    key   = first 8 bytes of sha256("counter/{seed}/{tensor}/{position}")   (Python, per input)
    z     = splitmix64(key + g * 0x9E3779B97F4A7C15),  g = entry_index // 4   (torch int64)
    draw  = 16-bit lane (entry_index % 4) of z, read little-endian as int16 in [-2^15, 2^15)

splitmix64 is Steele, Lea and Flood's finalizer ("Fast splittable pseudorandom number
generators", OOPSLA 2014; the constants of Java's SplittableRandom). Computed with torch
integer ops on the merge device, block by block, so nothing is stored, the draws of one entry
do not depend on the block size or the thread count, and CPU and CUDA give the same bits
(int64 multiplication wraps modulo 2^64 on both; `test_drops.py` pins it). A keep decision
compares the draw with a threshold: an entry is kept iff draw + 2^15 < round(density * 2^16),
so densities resolve to 2^-16.

This is the `drop_scheme: counter` of a recipe; `torch_cpu` (sparsify.RandomDraws, torch's
CPU generator) is the scheme of recipes written before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from evomerge.merge.blocks import map_blocks

Tensor = torch.Tensor

LANES = 4  # 16-bit draws per 64-bit hash
# Entries per block: 2^18 int16 draws come from 2^16 int64 hashes (512 KB of scratch, which
# stays in a core's L2 cache; 4x larger or smaller blocks measured up to 2x slower).
BLOCK = 1 << 18
_M64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_C1, _C2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def splitmix64(z: Tensor) -> Tensor:
    """In place on an int64 tensor: splitmix64's finalizer. torch shifts int64 right
    arithmetically, so each shift is masked back to a logical one."""
    for shift, multiplier in ((30, _C1), (27, _C2), (31, None)):
        t = z >> shift
        z ^= t.bitwise_and_((1 << (64 - shift)) - 1)
        if multiplier is not None:
            z.mul_(multiplier)
    return z


def reference_draw(key: int, index: int) -> int:
    """Entry `index`'s draw in plain Python integers (the definition the tensors must match)."""
    z = (key + (index // LANES) * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    lane = (z >> (16 * (index % LANES))) & 0xFFFF
    return lane - (1 << 16) if lane >= 1 << 15 else lane


def keep_threshold(density: float) -> int:
    """Entries whose draw is below this are kept: round(density * 2^16) - 2^15."""
    return round(min(max(density, 0.0), 1.0) * (1 << 16)) - (1 << 15)


class CounterDraws:
    """The draws of one input of one tensor (DARE keeps an entry iff its draw is below the
    density's threshold; DELLA compares U = (draw + 2^15) / 2^16 with its keep probability)."""

    def __init__(self, key: int) -> None:
        self.key = key & _M64

    @classmethod
    def for_input(cls, seed: int, tensor: str, position: int) -> CounterDraws:
        digest = hashlib.sha256(f"counter/{seed}/{tensor}/{position}".encode()).digest()
        return cls(int.from_bytes(digest[:8], "little"))

    def draws(self, start: int, stop: int, device: torch.device | str = "cpu") -> Tensor:
        """int16 draws of entries [start, stop) of the flattened tensor."""
        first, last = start // LANES, -(-stop // LANES)
        z = torch.arange(first, last, dtype=torch.int64, device=device)
        z.mul_(_GOLDEN).add_(_signed(self.key))
        lanes = splitmix64(z).view(torch.int16)  # little-endian: lane j is bits 16j..16j+15
        offset = start - first * LANES
        return lanes[offset : offset + stop - start]

    def drop_(self, delta: Tensor, density: float) -> None:
        """In place: `delta` times its 0/1 keep mask, made block by block (nothing stored)."""
        flat = delta.view(-1) if delta.is_contiguous() else None
        if flat is None:
            delta.mul_(self.keep(delta, density))
            return
        threshold = float(keep_threshold(density))

        def drop_block(i: int) -> None:
            block = flat[i * BLOCK : (i + 1) * BLOCK]
            draws = self.draws(i * BLOCK, i * BLOCK + block.numel(), delta.device)
            block.mul_(_mask(draws, threshold))

        map_blocks(-(-flat.numel() // BLOCK), drop_block, delta.device)

    def keep(self, like: Tensor, density: float) -> Tensor:
        """1.0 where kept, else 0.0, shaped like `like` (float32, float64 for float64)."""
        mask = self._blocks(like, lambda d: _mask(d, float(keep_threshold(density))))
        return mask.to(torch.float64) if like.dtype == torch.float64 else mask

    def uniform(self, like: Tensor) -> Tensor:
        """U = (draw + 2^15) / 2^16 in [0, 1), float32, shaped like `like` (exact multiples
        of 2^-16)."""
        return self._blocks(like, lambda d: d.float().add_(1 << 15).mul_(2.0**-16))

    def _blocks(self, like: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        out = torch.empty(like.shape, dtype=torch.float32, device=like.device)
        flat = out.view(-1)
        for start in range(0, flat.numel(), BLOCK):
            stop = min(start + BLOCK, flat.numel())
            flat[start:stop] = fn(self.draws(start, stop, like.device))
        return out


def _mask(draws: Tensor, threshold: float) -> Tensor:
    """clamp(threshold - draw, 0, 1): 1.0 exactly where draw < threshold (integers)."""
    return draws.float().neg_().add_(threshold).clamp_(0.0, 1.0)
