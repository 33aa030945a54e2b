"""Counter-based drops: a pure function of (seed, tensor, input, entry index), block by block."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.errors import RecipeError
from evomerge.merge import MergeOptions, drops, merge_to_disk
from evomerge.merge.drops import CounterDraws, keep_threshold, reference_draw
from evomerge.merge.sparsify import sparsify_
from evomerge.recipe import dump_recipe, load_recipe


def test_int64_multiplication_wraps_modulo_2_64() -> None:
    # the hash relies on it (C++ leaves signed overflow undefined; torch's kernels wrap)
    a = torch.tensor([2**62 + 12345, -(2**63) + 7, 2**63 - 1], dtype=torch.int64)
    for c in (drops._C1, drops._C2, drops._GOLDEN):
        got = (a * c).tolist()
        want = [((x * c + 2**63) % 2**64) - 2**63 for x in a.tolist()]
        assert got == want


@pytest.mark.parametrize("key", [0, 1, 0x123456789ABCDEF0, 2**64 - 1])
def test_draws_equal_the_python_definition(key: int) -> None:
    draws = CounterDraws(key)
    for start in (0, 3, 1000, 2**32 - 5, 2**40 + 1):
        got = draws.draws(start, start + 11).tolist()
        assert got == [reference_draw(key, i) for i in range(start, start + 11)], start


def test_draws_do_not_depend_on_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = CounterDraws.for_input(7, "model.layers.0.mlp.up_proj.weight", 1)
    whole = draws.draws(0, 10_000)
    for start, stop in ((0, 1), (1, 2), (3, 9), (4, 8), (5, 9_999), (9_998, 10_000)):
        assert torch.equal(draws.draws(start, stop), whole[start:stop])
    delta = torch.randn(97, 103, generator=torch.Generator().manual_seed(1))
    expected = delta * draws.keep(delta, 0.3)
    for block in (1, 3, 1000, 4096):
        monkeypatch.setattr(drops, "BLOCK", block)
        dropped = delta.clone()
        draws.drop_(dropped, 0.3)
        assert torch.equal(dropped, expected), block


def test_draws_do_not_depend_on_the_thread_count() -> None:
    draws = CounterDraws.for_input(0, "lm_head.weight", 0)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = draws.draws(0, 3_000_000)
        torch.set_num_threads(max(2, old))
        more = draws.draws(0, 3_000_000)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, more)


@pytest.mark.parametrize("density", [0.0, 2**-17, 0.1, 0.3, 0.5, 0.7, 0.99, 1.0])
def test_keep_is_the_threshold_comparison(density: float) -> None:
    draws = CounterDraws(99)
    like = torch.empty(300, 701)
    expected = draws.draws(0, like.numel()).int() < keep_threshold(density)
    expected = expected.reshape(like.shape)
    assert torch.equal(draws.keep(like, density), expected.float())
    assert torch.equal(draws.keep(like.double(), density), expected.double())


def test_uniform_lies_in_the_unit_interval_on_the_16_bit_grid() -> None:
    u = CounterDraws(3).uniform(torch.empty(1000, 1000))
    assert 0 <= float(u.min()) < 1e-4 and 1 - 1e-4 < float(u.max()) < 1
    assert torch.equal(u * 2**16, (u * 2**16).round())
    assert abs(float(u.mean()) - 0.5) < 1e-3  # sd of the mean: 0.29 / 1000


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9])
def test_kept_share_and_independence(density: float) -> None:
    n = 1_000_000
    a = CounterDraws.for_input(0, "t", 0).keep(torch.empty(n), density)
    b = CounterDraws.for_input(0, "t", 1).keep(torch.empty(n), density)
    sd = (density * (1 - density) / n) ** 0.5
    assert abs(float(a.mean()) - density) < 5 * sd
    # two inputs (and neighbouring entries, which share a hash) drop independently
    for x, y in ((a, b), (a[0::4], a[1::4]), (a[:-1], a[1:])):
        both = float((x * y).mean())
        assert abs(both - density**2) < 5 * (density**2 * (1 - density**2) / x.numel()) ** 0.5


def test_drop_rescales_to_the_l1_norm() -> None:
    delta = torch.randn(200_000, generator=torch.Generator().manual_seed(2))
    out = delta.clone()
    sparsify_("random", out, density=0.25, rescale=True, generator=CounterDraws(5))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.005
    torch.testing.assert_close(out.abs().sum(), delta.abs().sum())
    ratio = out[kept] / delta[kept]
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))


def test_the_same_code_runs_on_the_meta_device() -> None:
    delta = torch.empty(64, 300, device="meta")
    CounterDraws(1).drop_(delta, 0.5)
    assert CounterDraws(1).keep(delta, 0.5).shape == delta.shape
    assert CounterDraws(1).draws(5, 105, "meta").shape == (100,)


def _recipe(family: dict[str, Path], method: str, scheme: str | None) -> str:
    head = f"merge_method: {method}\nbase_model: {family['base']}\nrandom_seed: 4\n"
    if scheme is not None:
        head += f"drop_scheme: {scheme}\n"
    params = (
        "{weight: 0.6, density: 0.4, epsilon: 0.1}"
        if "della" in method
        else "{weight: 0.6, density: 0.4}"
    )
    return (
        head
        + "models:\n"
        + "".join(f"  - {{model: {family[m]}, parameters: {params}}}\n" for m in ("a", "b"))
    )


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_recipes_without_the_key_keep_the_earlier_scheme(
    family: dict[str, Path], tmp_path: Path, method: str
) -> None:
    merged = {}
    for scheme in (None, "torch_cpu", "counter"):
        out = merge_to_disk(load_recipe(_recipe(family, method, scheme)), tmp_path / str(scheme))
        merged[scheme] = load_file(out / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert all(torch.equal(merged[None][k], merged["torch_cpu"][k]) for k in merged[None])
    assert not torch.equal(merged["counter"][name], merged[None][name])


def test_drop_scheme_key_round_trips_and_is_checked(family: dict[str, Path]) -> None:
    recipe = load_recipe(_recipe(family, "dare_ties", "counter"))
    assert recipe.drop_scheme == "counter"
    assert "drop_scheme: counter" in dump_recipe(recipe)
    assert load_recipe(dump_recipe(recipe)) == recipe
    with pytest.raises(RecipeError, match=r"^drop_scheme: must be one of torch_cpu, counter"):
        load_recipe(_recipe(family, "dare_ties", "philox"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_and_merges_equal_the_cpu_ones(family: dict[str, Path], tmp_path: Path) -> None:
    draws = CounterDraws.for_input(11, "model.embed_tokens.weight", 2)
    assert torch.equal(draws.draws(0, 5_000_003, "cuda").cpu(), draws.draws(0, 5_000_003))
    like = torch.empty(1001, 999)
    assert torch.equal(draws.keep(like.cuda(), 0.37).cpu(), draws.keep(like, 0.37))
    assert torch.equal(draws.uniform(like.cuda()).cpu(), draws.uniform(like))
    recipe = load_recipe(_recipe(family, "dare_linear", "counter"))
    cpu = load_file(merge_to_disk(recipe, tmp_path / "cpu") / "model.safetensors")
    options = MergeOptions(device="cuda")
    gpu = load_file(merge_to_disk(recipe, tmp_path / "gpu", options) / "model.safetensors")
    for name in cpu:  # the same entries dropped; sums may round differently on the GPU
        assert torch.equal(gpu[name] == 0, cpu[name] == 0) or name.endswith("norm.weight")
        torch.testing.assert_close(gpu[name], cpu[name], rtol=1e-5, atol=1e-6)
