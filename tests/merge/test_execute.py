"""The merge engine end to end: disk output, in-memory merges, dtypes, sharding, config."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import MergeError
from evomerge.merge import MergeOptions, SourceCache, merge_into_model, merge_to_disk
from evomerge.merge.io import CheckpointReader, parse_size
from evomerge.recipe import Recipe, load_recipe
from evomerge_dev.testing import make_tiny_llama


def _recipe(family: dict[str, Path], method: str = "ties", **extra: str) -> Recipe:
    params = "{weight: 0.6, density: 0.5}" if method != "linear" else "{weight: 0.6}"
    base = f"base_model: {family['base']}\n" if method != "linear" else ""
    text = (
        f"merge_method: {method}\n{base}models:\n"
        f"  - {{model: {family['a']}, parameters: {params}}}\n"
        f"  - {{model: {family['b']}, parameters: {params}}}\n"
    )
    return load_recipe(text + "".join(f"{k}: {v}\n" for k, v in extra.items()))


def _state(directory: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(directory).state_dict()


@pytest.mark.parametrize("method", ["ties", "dare_ties", "linear"])
def test_in_memory_equals_disk(method: str, family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(family, method)
    options = MergeOptions(random_seed=5)
    disk = _state(merge_to_disk(recipe, tmp_path / "out", options))
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    cache = SourceCache(preload=True)
    merge_into_model(recipe, model, options, cache)
    merge_into_model(recipe, model, options, cache)  # again, from the cache: same numbers
    live = model.state_dict()
    assert disk.keys() == live.keys()
    for name in disk:
        assert torch.equal(disk[name], live[name]), name


def test_seeded_merges_depend_only_on_the_seed(family: dict[str, Path]) -> None:
    recipe = _recipe(family, "dare_ties")
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    cache = SourceCache(preload=True)
    results = []
    for seed in (1, 1, 2):
        merge_into_model(recipe, model, MergeOptions(random_seed=seed), cache)
        results.append(model.model.layers[0].mlp.up_proj.weight.detach().clone())
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])


def test_output_is_a_loadable_sharded_checkpoint(family: dict[str, Path], tmp_path: Path) -> None:
    out = merge_to_disk(_recipe(family), tmp_path / "out", MergeOptions(shard_size=20_000))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    biggest_tensor = 64 * 32 * 4
    assert all((out / s).stat().st_size <= 20_000 + biggest_tensor + 4096 for s in shards)
    assert len(index["weight_map"]) == len(CheckpointReader.open(out).names())
    assert AutoTokenizer.from_pretrained(out)("w1 w2")["input_ids"] == [14, 15]
    card = (out / "README.md").read_text()
    assert "merge_method: ties" in card and str(family["a"]) in card
    assert not list(tmp_path.glob(".out.*"))  # the temporary directory was renamed


def test_passthrough_stacks_layers_and_updates_config(
    family: dict[str, Path], tmp_path: Path
) -> None:
    text = f"""
merge_method: passthrough
slices:
  - sources: [{{model: {family["a"]}, layer_range: [0, 3]}}]
  - sources: [{{model: {family["b"]}, layer_range: [1, 3], parameters: {{scale: [{{filter: o_proj, value: 0.5}}, {{value: 1}}]}}}}]
"""
    out = merge_to_disk(load_recipe(text), tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
    merged, b = _state(out), _state(family["b"])
    name = "model.layers.{}.self_attn.{}_proj.weight"
    torch.testing.assert_close(merged[name.format(3, "o")], 0.5 * b[name.format(1, "o")])
    assert torch.equal(merged[name.format(4, "q")], b[name.format(2, "q")])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([[1, 5, 7]])).logits.shape == (1, 3, 64)


def test_qwen2_layer_types_follow_the_layer_count(tmp_path: Path) -> None:
    q = make_tiny_llama(tmp_path / "q", seed=4, model_type="qwen2", num_layers=2)
    text = f"""
merge_method: passthrough
slices:
  - sources: [{{model: {q}, layer_range: [0, 2]}}]
  - sources: [{{model: {q}, layer_range: [0, 2]}}]
"""
    out = merge_to_disk(load_recipe(text), tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and len(config["layer_types"]) == 4
    AutoModelForCausalLM.from_pretrained(out)


def test_dtypes(family: dict[str, Path], tmp_path: Path) -> None:
    half = make_tiny_llama(tmp_path / "half", seed=6, base=family["base"], dtype=torch.bfloat16)
    text = f"merge_method: linear\nmodels: [{{model: {half}, parameters: {{weight: 1}}}}, {{model: {family['a']}, parameters: {{weight: 1}}}}]\n"
    promoted = CheckpointReader.open(merge_to_disk(load_recipe(text), tmp_path / "o1"))
    assert promoted.info("model.norm.weight").dtype == torch.float32
    recipe = load_recipe(text + "dtype: bfloat16\n")
    out = merge_to_disk(recipe, tmp_path / "o2", MergeOptions(out_dtype="float16"))
    assert CheckpointReader.open(out).info("model.norm.weight").dtype == torch.float16
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    out = merge_to_disk(recipe, tmp_path / "o3")
    assert CheckpointReader.open(out).info("lm_head.weight").dtype == torch.bfloat16


def test_parse_size() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500M") == 5 * 10**8
    assert parse_size("1.5kb") == 1500 and parse_size("123") == 123


def test_in_memory_merge_names_the_tensors_it_checked_finite(family: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    recipe = _recipe(family, "dare_ties")
    assert merge_into_model(recipe, model) == frozenset(model.state_dict())
    # weights of 3e38 overflow float32 where |x| is large (the norms' ~1.0): inf, no NaN
    text = (
        "merge_method: linear\nparameters: {normalize: false}\nmodels:\n"
        f"  - {{model: {family['a']}, parameters: {{weight: 3e38}}}}\n"
        f"  - {{model: {family['b']}, parameters: {{weight: 3e38}}}}\n"
    )
    finite = merge_into_model(load_recipe(text), model)
    state = model.state_dict()
    assert finite == {name for name, t in state.items() if bool(torch.isfinite(t).all())}
    assert 0 < len(finite) < len(state)
    opposed = text.replace("3e38}}\n", "1e39}}\n", 1).replace("weight: 3e38", "weight: -1e39")
    with pytest.raises(MergeError, match="with linear produced NaN"):
        merge_into_model(load_recipe(opposed), model)
