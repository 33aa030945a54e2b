"""Sparsification masks: exact counts (ties included), and agreement with a sort."""

import pytest
import torch

from evomerge.merge import sparsify
from evomerge.merge.sparsify import (
    RandomDraws,
    largest_mask,
    magnitude_mask,
    outlier_mask,
    sparsify_,
)


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


@pytest.mark.parametrize("density", [0.0, 1e-5, 0.1, 0.3, 0.5, 0.333251953125, 0.7, 0.99, 0.99995])
def test_dare_float_mask_equals_the_float16_comparison(density: float) -> None:
    draws = RandomDraws(seed=11)
    like = torch.empty(300, 700)
    u = draws.uniform(like)
    expected = ~(u >= density)  # the drop rule on float16 draws
    assert torch.equal(draws.keep(like, density), expected.float())
    assert torch.equal(draws.keep(like.double(), density), expected.double())


def test_dare_keep_threshold_on_every_float16_value() -> None:
    grid = torch.arange(0x3C00, dtype=torch.int16).view(torch.float16).reshape(120, 128)
    draws = RandomDraws(seed=0, store={(0, "cpu"): grid})  # the draws are every float16 value
    for density in torch.rand(200, generator=torch.Generator().manual_seed(4)).tolist():
        assert torch.equal(draws.keep(grid, density), (~(grid >= density)).float()), density


def test_random_drop_with_a_known_l1_norm_equals_the_computed_one() -> None:
    delta = torch.randn(5000, generator=torch.Generator().manual_seed(5))
    a, b = delta.clone(), delta.clone()
    sparsify_("random", a, density=0.4, rescale=True, generator=RandomDraws(9))
    sparsify_(
        "random",
        b,
        density=0.4,
        rescale=True,
        generator=RandomDraws(9),
        l1=float(delta.abs().sum()),
    )
    assert torch.equal(a, b)


def test_draws_made_block_by_block_equal_one_whole_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparsify, "BLOCK", 1000)  # 37 blocks, the last one partial
    delta = torch.randn(61, 600, generator=torch.Generator().manual_seed(6))
    blocked = delta.clone()
    RandomDraws(seed=21).drop_(blocked, 0.35)  # no store: drawn block by block
    assert torch.equal(blocked, delta * RandomDraws(seed=21).keep(delta, 0.35))


@pytest.mark.parametrize("density", [0.001, 0.3, 0.5, 0.97])
def test_magnitude_drop_in_float_equals_the_boolean_mask(density: float) -> None:
    # bfloat16 deltas: many exact ties at the threshold, kept first in order
    delta = torch.randn(300, 500, generator=torch.Generator().manual_seed(7))
    delta = delta.to(torch.bfloat16).float()
    expected = delta.masked_fill(~magnitude_mask(delta, density), 0.0)
    out = delta.clone()
    sparsify_("magnitude", out, density=density)
    assert torch.equal(out, expected)
    assert int(torch.count_nonzero(out)) == max(1, int(density * delta.numel()))
