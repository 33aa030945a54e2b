"""Sparsification masks: exact counts (ties included), and agreement with a sort."""

import pytest
import torch

from evomerge.merge.sparsify import largest_mask, magnitude_mask, outlier_mask, sparsify_


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 50_000])
def test_largest_mask_equals_topk_without_ties(n: int) -> None:
    values = torch.randn(n, generator=torch.Generator().manual_seed(n)).abs()
    for k in sorted({1, n // 3, n // 2, n - 1, n} - {0}):
        expected = torch.zeros(n, dtype=torch.bool)
        expected[torch.topk(values, k).indices] = True
        assert torch.equal(largest_mask(values, k), expected), k


def test_largest_mask_keeps_exactly_k_with_ties() -> None:
    # bfloat16 values: thousands of exact ties
    values = torch.randn(20_000, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    values = values.float().abs()
    for k in (1, 777, 10_000, 19_999):
        mask = largest_mask(values, k)
        assert int(mask.sum()) == k
        assert values[mask].min() >= values[~mask].max()


def test_magnitude_and_outlier_masks() -> None:
    delta = torch.arange(1.0, 101.0) * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0)
    kept = magnitude_mask(delta, 0.1)
    assert kept.nonzero().squeeze(1).tolist() == list(range(90, 100))
    # breadcrumbs: drop the 5 largest, keep the next 20, drop the rest
    kept = outlier_mask(delta, 0.2, 0.05)
    assert kept.nonzero().squeeze(1).tolist() == list(range(75, 95))


def test_random_mask_rescales_to_the_l1_norm() -> None:
    delta = torch.randn(100_000, generator=torch.Generator().manual_seed(2))
    out = delta.clone()
    sparsify_("random", out, density=0.25, rescale=True, generator=torch.Generator().manual_seed(3))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(out.abs().sum(), delta.abs().sum())
    ratio = out[kept] / delta[kept]
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))
