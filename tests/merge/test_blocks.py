"""Work split by blocks over threads (merge/blocks.py): the same bytes at any thread count."""

import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from evomerge.merge import blocks
from evomerge.merge.drops import BLOCK, CounterDraws
from evomerge.merge.methods.task_vectors import _elected_sum
from evomerge.merge.sparsify import kth_largest_ties, sparsify_


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _at(count: int, fn: Callable[[], object]) -> object:
    torch.set_num_threads(count)
    return fn()


def test_map_blocks_runs_every_block_once_on_worker_threads(threads: None) -> None:
    torch.set_num_threads(2)
    seen: list[tuple[int, int, int]] = []

    def block(i: int) -> int:
        seen.append((i, threading.get_ident(), torch.get_num_threads()))
        return i * i

    assert blocks.map_blocks(7, block) == [i * i for i in range(7)]
    assert sorted(i for i, _, _ in seen) == list(range(7))
    assert {n for _, _, n in seen} == {1}  # each worker's ops on one torch thread
    assert threading.get_ident() not in {t for _, t, _ in seen}
    assert torch.get_num_threads() == 2  # restored


def test_counter_drops_and_histograms_equal_at_one_and_two_threads(threads: None) -> None:
    delta = torch.randn(5 * BLOCK + 123, generator=torch.Generator().manual_seed(3))
    delta = delta.to(torch.bfloat16).float()  # ties at the cut

    def drop() -> torch.Tensor:
        out = delta.clone()
        CounterDraws(11).drop_(out, 0.4)
        return out

    def trim() -> torch.Tensor:
        out = delta.clone()
        sparsify_("magnitude", out, density=0.3)
        return out

    k = delta.numel() // 3
    for fn in (drop, trim, lambda: kth_largest_ties(delta.abs(), k)):
        one, two = _at(1, fn), _at(2, fn)
        if isinstance(one, torch.Tensor) and isinstance(two, torch.Tensor):
            assert torch.equal(one.view(torch.int32), two.view(torch.int32))  # -0.0 too
        else:
            assert one == two


def _elected_reference(
    deltas: torch.Tensor, weights: torch.Tensor, normalize: bool
) -> torch.Tensor:
    """The sign-elected sum as whole-tensor operations (the formula before blocks)."""
    elected = deltas.sum(dim=0).sign_().add_(0.5).sign_()
    if deltas.shape[0] == 2:
        elected = torch.add(deltas[0], deltas[1]).sign_().add_(0.5).sign_()
    kept = deltas.mul_(elected).clamp_(min=0)
    total = torch.add(kept[0], kept[1]) if deltas.shape[0] == 2 else kept.sum(dim=0)
    mixed = total.mul_(elected)
    if normalize:
        divisor = torch.zeros_like(mixed)
        for w, row in zip(weights.reshape(-1).tolist(), kept.sign_(), strict=True):
            divisor.add_(row, alpha=w)
        divisor.add_(divisor.abs().sign_().neg_().add_(1))
        mixed /= divisor
    return mixed


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("normalize", [False, True])
def test_blocked_sign_election_equals_the_whole_tensor_formula(
    n: int, normalize: bool, threads: None
) -> None:
    gen = torch.Generator().manual_seed(n)
    deltas = torch.randn(n, 300, 777, generator=gen).to(torch.bfloat16).float()  # ~7 blocks
    weights = torch.rand(n, generator=gen).reshape(-1, 1, 1)
    expected = _elected_reference(deltas.clone(), weights, normalize)
    for count in (1, 2):
        torch.set_num_threads(count)
        got = _elected_sum(deltas.clone(), weights, normalize)
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), count
