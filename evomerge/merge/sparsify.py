"""Sparsification of task vectors (deltas): which entries survive, and how they are rescaled.

- magnitude (TIES): keep the `density` share with the largest |delta|, at least one entry.
- random (DARE): keep each entry with probability `density`, from a seeded generator.
- outliers (breadcrumbs): drop the `gamma` share with the largest |delta| and the smallest ones,
  keeping `density` of the entries.

With `rescale`, survivors are scaled so the L1 norm of the delta is unchanged (mergekit's rule;
for DARE this is 1/density in expectation).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def sparsify_(
    method: str,
    delta: Tensor,
    *,
    density: float,
    gamma: float = 0.0,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> None:
    """In place: zero the dropped entries of `delta`; with `rescale`, restore its L1 norm."""
    if density >= 1:
        return
    if method == "magnitude":
        mask = magnitude_mask(delta, density)
    elif method == "random":
        mask = random_mask(delta, density, generator)
    elif method == "outliers":
        mask = outlier_mask(delta, density, gamma)
    else:
        raise ValueError(f"unknown sparsification {method!r}")
    before = delta.abs().sum() if rescale else None
    delta.mul_(mask)
    del mask
    if before is not None:
        after = delta.abs().sum()
        # Nearly empty task vectors are left unscaled rather than blown up (as mergekit).
        if before >= 1e-7 and after >= 1e-7:
            delta.mul_(before / after)


def magnitude_mask(delta: Tensor, density: float) -> Tensor:
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    k = max(1, int(density * delta.numel()))
    keep = torch.topk(delta.abs().reshape(-1), k, sorted=False).indices
    mask = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    mask[keep] = True
    return mask.reshape(delta.shape)


def random_mask(delta: Tensor, density: float, generator: torch.Generator | None) -> Tensor:
    probabilities = torch.full_like(delta, density)
    return torch.bernoulli(probabilities, generator=generator)


def outlier_mask(delta: Tensor, density: float, gamma: float) -> Tensor:
    n = delta.numel()
    keep_n = int(density * n)
    top_n = int(gamma * n)
    # Fewer outliers are dropped when needed to keep `density` of the entries.
    bottom_n = max(0, n - keep_n - top_n)
    order = torch.argsort(delta.abs().reshape(-1))  # ascending |delta|
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[order[bottom_n : bottom_n + keep_n]] = True
    return mask.reshape(delta.shape)
