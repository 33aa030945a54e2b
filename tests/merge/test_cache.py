"""What a preloading SourceCache keeps per search (task vectors, DARE's draws) changes no bit."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from evomerge.merge import MergeOptions, SourceCache, merge_into_model
from evomerge.recipe import load_recipe

# Every method on task vectors that the search can run, with and without normalization.
CASES = [
    ("task_arithmetic", "{weight: 0.7}", ""),
    ("ties", "{weight: 0.7, density: 0.4}", ""),
    ("ties", "{weight: 0.7, density: 0.4}", "parameters: {normalize: false}\n"),
    ("dare_ties", "{weight: 1.3, density: 0.3}", "parameters: {normalize: false}\n"),
    ("dare_ties", "{weight: 1.3, density: 0.3}", ""),
    ("dare_linear", "{weight: 0.9, density: 0.6}", ""),
    ("breadcrumbs_ties", "{weight: 0.8, density: 0.5, gamma: 0.05}", ""),
    ("della", "{weight: 0.8, density: 0.5, epsilon: 0.1}", ""),
]


def _merged(family: dict[str, Path], text: str, cache: SourceCache) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    options = MergeOptions(random_seed=3)
    merge_into_model(load_recipe(text), model, options, cache)
    merge_into_model(load_recipe(text), model, options, cache)  # the second from what is kept
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("method", "params", "extra"), CASES)
def test_kept_task_vectors_give_the_same_bits(
    family: dict[str, Path], method: str, params: str, extra: str
) -> None:
    text = f"merge_method: {method}\nbase_model: {family['base']}\n{extra}models:\n" + "".join(
        f"  - {{model: {family[m]}, parameters: {params}}}\n" for m in ("a", "b", "c")
    )
    plain = _merged(family, text, SourceCache())
    kept = _merged(family, text, SourceCache(preload=True))
    part = _merged(family, text, SourceCache(preload=True, task_vector_bytes=20_000))
    for name, tensor in plain.items():
        for other in (kept, part):
            bits = other[name].view(torch.int32)
            assert torch.equal(tensor.view(torch.int32), bits), (method, name)


def test_task_vectors_are_kept_within_the_budget(family: dict[str, Path]) -> None:
    text = (
        f"merge_method: task_arithmetic\nbase_model: {family['base']}\nmodels:\n"
        f"  - {{model: {family['a']}, parameters: {{weight: 0.5}}}}\n"
    )
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    everything = SourceCache(preload=True)
    merge_into_model(load_recipe(text), model, cache=everything)
    floats = sum(t.numel() * 4 for t in model.parameters())
    assert everything._task_vector_bytes_used == floats  # one float32 vector per tensor
    budget = SourceCache(preload=True, task_vector_bytes=floats // 3)
    merge_into_model(load_recipe(text), model, cache=budget)
    assert 0 < budget._task_vector_bytes_used <= floats // 3
    plain = SourceCache()
    merge_into_model(load_recipe(text), model, cache=plain)
    assert plain._task_vector_bytes_used == 0 and not plain._task_vectors


def test_cpu_sources_are_read_through_maps_not_kept(family: dict[str, Path]) -> None:
    text = (
        f"merge_method: dare_ties\nbase_model: {family['base']}\ndrop_scheme: counter\n"
        f"models:\n  - {{model: {family['a']}, parameters: {{weight: 0.5, density: 0.5}}}}\n"
    )
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    cache = SourceCache(preload=True)
    merge_into_model(load_recipe(text), model, cache=cache)
    assert not cache._tensors and not cache._staged  # no source copies, nothing left staged


def test_device_copies_are_kept_within_their_budget(family: dict[str, Path]) -> None:
    meta = torch.device("meta")  # stands in for a GPU: tensors moved off the CPU are kept
    everything = SourceCache(preload=True)
    budget = SourceCache(preload=True, device_bytes=50_000)
    for cache in (everything, budget):
        for name in cache.layout(str(family["a"])).tensors:
            assert cache.tensor(str(family["a"]), name, meta).device == meta
    total = sum(t.numel() * t.element_size() for t in everything._tensors.values())
    assert everything._device_bytes_used == total > 50_000
    assert 0 < budget._device_bytes_used <= 50_000
    assert len(budget._tensors) < len(everything._tensors)
