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


def apply(
    method: str,
    delta: Tensor,
    *,
    density: float,
    gamma: float = 0.0,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    if density >= 1:
        return delta
    if method == "magnitude":
        mask = magnitude_mask(delta, density)
    elif method == "random":
        mask = random_mask(delta, density, generator)
    elif method == "outliers":
        mask = outlier_mask(delta, density, gamma)
    else:
        raise ValueError(f"unknown sparsification {method!r}")
    return rescaled(delta, mask) if rescale else delta * mask


def magnitude_mask(delta: Tensor, density: float) -> Tensor:
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    keep = torch.topk(delta.abs().reshape(-1), k, sorted=False).indices
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[keep] = 1
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
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[bottom_n : bottom_n + keep_n]] = 1
    return mask.reshape(delta.shape)


def rescaled(delta: Tensor, mask: Tensor, eps: float = 1e-7) -> Tensor:
    """delta * mask, scaled to the L1 norm of delta (unless either norm is below eps)."""
    masked = delta * mask
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)
