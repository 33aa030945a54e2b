"""LoRA adapters as sources (`model: BASE+ADAPTER`): equal to mergekit 0.1.5, which merges each
adapter into its base with PEFT first; checked errors for adapters that do not fit."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from evomerge.errors import MergeError
from evomerge.merge import MergeOptions, SourceCache, merge_to_disk
from evomerge.merge.lora import split_adapter
from evomerge.recipe import load_recipe
from evomerge_dev.testing import load_tensors as _load
from evomerge_dev.testing import make_tiny_llama, make_tiny_lora
from evomerge_dev.testing import render_recipe as _render

pytest.importorskip("peft")
mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_config = pytest.importorskip("mergekit.config")
mergekit_options = pytest.importorskip("mergekit.options")


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base, a full fine-tune of it, and three adapters: plain; rsLoRA with per-module rank
    and alpha, a LoRA embedding and a saved head; and one on the MLP only."""
    root = tmp_path_factory.mktemp("lora")
    base = make_tiny_llama(root / "base", seed=0, num_layers=3)
    return {
        "base": base,
        "full": make_tiny_llama(root / "full", seed=1, base=base),
        "ad1": make_tiny_lora(root / "ad1", base, seed=2),
        "ad2": make_tiny_lora(
            root / "ad2",
            base,
            seed=3,
            target_modules=("q_proj", "k_proj", "o_proj", "up_proj", "embed_tokens"),
            use_rslora=True,
            rank_pattern={"layers.1.self_attn.q_proj": 2},
            alpha_pattern={"o_proj": 3},
            modules_to_save=["lm_head"],
        ),
        "ad3": make_tiny_lora(root / "ad3", base, seed=4, target_modules=("gate_proj",), r=2),
    }


CASES = {
    "linear": """
merge_method: linear
models:
  - {model: $base+$ad1, parameters: {weight: 0.5}}
  - {model: $base+$ad2, parameters: {weight: [0.2, 0.6]}}
  - {model: $full, parameters: {weight: 0.3}}
""",
    "ties": """
merge_method: ties
base_model: $base
parameters: {normalize: true}
models:
  - {model: $base+$ad1, parameters: {weight: 0.6, density: 0.5}}
  - {model: $base+$ad2, parameters: {weight: 0.5, density: [0.3, 0.8]}}
  - {model: $base+$ad3, parameters: {weight: 0.4, density: 0.7}}
""",
    "task_arithmetic_adapter_base": """
merge_method: task_arithmetic
base_model: $base+$ad3
models:
  - {model: $base+$ad1, parameters: {weight: 0.7}}
  - {model: $full, parameters: {weight: 0.4}}
""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tensors_as_mergekit(case: str, lora: dict[str, Path], tmp_path: Path) -> None:
    text = _render(CASES[case], lora)
    config = mergekit_config.MergeConfiguration.model_validate(yaml.safe_load(text))
    options = mergekit_options.MergeOptions(quiet=True, lora_merge_cache=str(tmp_path / "cache"))
    mergekit_merge.run_merge(config, str(tmp_path / "mergekit"), options)
    theirs = _load(tmp_path / "mergekit")
    ours = _load(merge_to_disk(load_recipe(text), tmp_path / "ours"))
    assert set(ours) == set(theirs)
    diff = max((ours[k].double() - theirs[k].double()).abs().max().item() for k in ours)
    print(f"oracle lora {case}: {len(ours)} tensors, max abs diff {diff:.3g}")
    assert diff == 0.0
    # the adapters changed the merge: it differs from the same recipe on the bare base
    bare = _load(merge_to_disk(load_recipe(text.replace(f"+{lora['ad1']}", "")), tmp_path / "b"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(bare[name], ours[name])


def test_each_tensor_is_base_plus_scaled_update(lora: dict[str, Path]) -> None:
    """Out of core: the update is applied as a tensor is read; untouched tensors are the base's."""
    cache = SourceCache()
    ref = f"{lora['base']}+{lora['ad2']}"
    cache.layout(ref)
    base = _load(lora["base"])
    factors = load_file(lora["ad2"] / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.1.self_attn."
    # q_proj of layer 1: rank 2 (rank_pattern), alpha 8, rsLoRA: s = 8 / sqrt(2)
    a, b = factors[prefix + "q_proj.lora_A.weight"], factors[prefix + "q_proj.lora_B.weight"]
    assert a.shape[0] == 2
    q = cache.tensor(ref, "model.layers.1.self_attn.q_proj.weight", torch.device("cpu"))
    expected = base["model.layers.1.self_attn.q_proj.weight"] + (b @ a) * (8 / 2**0.5)
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-7)
    # o_proj: alpha 3 (alpha_pattern), rank 4: s = 3 / 2
    a, b = factors[prefix + "o_proj.lora_A.weight"], factors[prefix + "o_proj.lora_B.weight"]
    o = cache.tensor(ref, "model.layers.1.self_attn.o_proj.weight", torch.device("cpu"))
    expected = base["model.layers.1.self_attn.o_proj.weight"] + (b @ a) * 1.5
    torch.testing.assert_close(o, expected, rtol=0, atol=1e-7)
    head = cache.tensor(ref, "lm_head.weight", torch.device("cpu"))  # modules_to_save
    assert torch.equal(head, factors["base_model.model.lm_head.weight"])
    norm = cache.tensor(ref, "model.norm.weight", torch.device("cpu"))
    assert torch.equal(norm, base["model.norm.weight"])


def test_bfloat16_base_rounds_like_peft(tmp_path: Path) -> None:
    """A bf16 base with a bf16 adapter gives PEFT's merge_and_unload bit for bit."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = make_tiny_llama(tmp_path / "base", seed=5, dtype=torch.bfloat16)
    adapter = make_tiny_lora(
        tmp_path / "ad", base, seed=6, target_modules=("q_proj", "embed_tokens")
    )
    factors = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v.bfloat16() for k, v in factors.items()}, adapter / "adapter_model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
    cache = SourceCache()
    ref = f"{base}+{adapter}"
    for name in cache.layout(ref).tensors:
        ours = cache.tensor(ref, name, torch.device("cpu"))
        assert ours.dtype == torch.bfloat16
        assert torch.equal(ours, merged[name]), name


def _ties(lora: dict[str, Path], adapter: Path) -> str:
    return (
        f"merge_method: ties\nbase_model: {lora['base']}\n"
        f"models: [{{model: {lora['base']}+{adapter}, parameters: {{weight: 1.0, density: 0.5}}}}]\n"
    )


def test_adapter_of_another_base_is_refused(lora: dict[str, Path], tmp_path: Path) -> None:
    wide = make_tiny_llama(tmp_path / "wide", seed=7, hidden_size=48)
    adapter = make_tiny_lora(tmp_path / "ad", wide, seed=8)
    shapes = r"with shape \[48, 96\], but base .* has \[32, 64\]"
    with pytest.raises(
        MergeError, match=r"changes model\.layers\.0\.mlp\.down_proj\.weight " + shapes
    ):
        merge_to_disk(load_recipe(_ties(lora, adapter)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapter_whose_target_modules_do_not_fit_is_refused(
    lora: dict[str, Path], tmp_path: Path
) -> None:
    adapter = tmp_path / "gpt2_like"
    adapter.mkdir()
    config = json.loads((lora["ad1"] / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    prefix = "base_model.model.transformer.h.0.attn.c_attn."
    save_file(
        {
            prefix + "lora_A.weight": torch.zeros(4, 32),
            prefix + "lora_B.weight": torch.zeros(96, 4),
        },
        adapter / "adapter_model.safetensors",
    )
    with pytest.raises(
        MergeError,
        match=r"changes transformer\.h\.0\.attn\.c_attn\.weight, which "
        r"base .* does not have \(target_modules \['c_attn'\] do not fit",
    ):
        merge_to_disk(load_recipe(_ties(lora, adapter)), tmp_path / "out")


def test_pickle_adapter_needs_opt_in(lora: dict[str, Path], tmp_path: Path) -> None:
    adapter = make_tiny_lora(tmp_path / "bin", lora["base"], seed=2, safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file()
    recipe = load_recipe(_ties(lora, adapter))
    with pytest.raises(MergeError, match=r"only adapter_model\.bin, a pickle .* --allow-pickle"):
        merge_to_disk(recipe, tmp_path / "refused")
    out = merge_to_disk(recipe, tmp_path / "allowed", MergeOptions(allow_pickle=True))
    same = merge_to_disk(load_recipe(_ties(lora, lora["ad1"])), tmp_path / "safe")
    ours, safe = _load(out), _load(same)  # the same adapter (seed 2), saved either way
    assert all(torch.equal(ours[k], safe[k]) for k in ours)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"peft_type": "IA3"}, r"peft_type is 'IA3'; only LORA"),
        ({"use_dora": True}, r"uses DoRA \(use_dora\), which is not supported"),
        ({"r": 0}, r"r must be a positive number, got 0"),
        ({"r": 8}, r"expected rank 8"),
    ],
)
def test_unsupported_adapter_configs(
    edit: dict[str, object], message: str, lora: dict[str, Path], tmp_path: Path
) -> None:
    adapter = tmp_path / "edited"
    adapter.mkdir()
    config = json.loads((lora["ad1"] / "adapter_config.json").read_text()) | edit
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(
        (lora["ad1"] / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(MergeError, match=message):
        merge_to_disk(load_recipe(_ties(lora, adapter)), tmp_path / "out")


def test_not_an_adapter(lora: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MergeError, match=r"no adapter_config\.json in .*a PEFT LoRA adapter"):
        merge_to_disk(load_recipe(_ties(lora, lora["full"])), tmp_path / "out")
    with pytest.raises(MergeError, match=r"BASE\+ADAPTER \(one '\+'"):
        split_adapter("a+b+c")
