"""Tiny deterministic checkpoints for tests (shared here: tests run with --import-mode=importlib).

make_tiny_llama writes a random Llama-family checkpoint in milliseconds: config.json, safetensors
(optionally sharded, with an index) and a word-level tokenizer.json that AutoTokenizer loads
offline. Models derived from one `base` plus small seeded noise behave like fine-tunes of it,
which is what task-arithmetic tests need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
}
_SPECIALS = ["<unk>", "<s>", "</s>"]

# Hydra overrides for a search that takes seconds: the small toy family, a population of 4 and
# 40 prompts per candidate on one thread (the tests' and scripts/reliability.py's searches).
SMALL_SEARCH = (
    "models.toy_size=small",
    "optimizer.population_size=4",
    "evaluator.limit=40",
    "evaluator.batch_size=40",
    "threads=1",
)


def make_tiny_llama(
    path: str | Path,
    *,
    seed: int,
    num_layers: int = 2,
    hidden_size: int = 32,
    vocab_size: int = 64,
    tie_word_embeddings: bool = False,
    shards: int = 1,
    dtype: torch.dtype = torch.float32,
    base: Path | None = None,
    noise: float = 0.01,
    model_type: str = "llama",
) -> Path:
    """Write a tiny random checkpoint to `path` and return it.

    Same arguments, same bytes. With `base`, every tensor is base + noise * N(0, 1) (the base's
    shapes and config win over num_layers / hidden_size / vocab_size).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    if base is not None:
        config = json.loads((Path(base) / "config.json").read_text())
        tensors = {
            name: t.float() + noise * torch.randn(t.shape, generator=generator)
            for name, t in sorted(load_tensors(Path(base)).items())
        }
    else:
        config = tiny_config(model_type, num_layers, hidden_size, vocab_size, tie_word_embeddings)
        tensors = _random_tensors(config, generator)
    config["dtype"] = str(dtype).removeprefix("torch.")
    tensors = {name: t.to(dtype).contiguous() for name, t in tensors.items()}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _write_shards(out, tensors, shards)
    write_tiny_tokenizer(out, int(config["vocab_size"]))
    return out


def tiny_config(
    model_type: str, num_layers: int, hidden_size: int, vocab_size: int, tied: bool
) -> dict[str, Any]:
    heads = 4
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,
        "head_dim": hidden_size // heads,
        "hidden_act": "gelu_pytorch_tanh" if model_type == "gemma" else "silu",
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": tied or model_type == "gemma",
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    }
    if model_type == "qwen2":
        config["layer_types"] = ["full_attention"] * num_layers
    return config


def _random_tensors(config: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]

    def weight(*shape: int) -> torch.Tensor:
        return 0.02 * torch.randn(shape, generator=gen)

    def norm() -> torch.Tensor:
        return 1 + 0.1 * torch.randn(h, generator=gen)

    tensors = {"model.embed_tokens.weight": weight(v, h)}
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        tensors[p + "input_layernorm.weight"] = norm()
        for name, rows in (("q", q), ("k", kv), ("v", kv)):
            tensors[p + f"self_attn.{name}_proj.weight"] = weight(rows, h)
            if config["model_type"] == "qwen2":
                tensors[p + f"self_attn.{name}_proj.bias"] = weight(rows)
        tensors[p + "self_attn.o_proj.weight"] = weight(h, q)
        tensors[p + "post_attention_layernorm.weight"] = norm()
        tensors[p + "mlp.gate_proj.weight"] = weight(i, h)
        tensors[p + "mlp.up_proj.weight"] = weight(i, h)
        tensors[p + "mlp.down_proj.weight"] = weight(h, i)
    tensors["model.norm.weight"] = norm()
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = weight(v, h)
    return tensors


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory's safetensors files, by name."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def render_recipe(template: str, paths: dict[str, Path]) -> str:
    """A recipe template with each `$name` replaced by paths[name] (longest names first)."""
    for key in sorted(paths, key=len, reverse=True):
        template = template.replace(f"${key}", str(paths[key]))
    return template


def _write_shards(out: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    size = -(-len(names) // shards)  # ceil
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k * size : (k + 1) * size]}
        save_file(part, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_tiny_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer: specials, digits, then `w<k>` words up to vocab_size."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = _SPECIALS + [str(d) for d in range(10)]
    words += [f"w{k}" for k in range(vocab_size - len(words))]
    vocab = {word: index for index, word in enumerate(words[:vocab_size])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 128,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def make_tiny_lora(
    path: str | Path,
    base: Path,
    *,
    seed: int,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    safe_serialization: bool = True,
    **lora: Any,
) -> Path:
    """A PEFT LoRA adapter of `base` with random (non-zero) A and B, saved to `path`.

    Extra keywords go to peft.LoraConfig (r, lora_alpha, use_rslora, rank_pattern,
    modules_to_save, ...). Same arguments, same bytes.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # PEFT draws A and B from torch's global generator
    model = AutoModelForCausalLM.from_pretrained(base)
    settings = {"r": 4, "lora_alpha": 8, **lora}
    config = LoraConfig(target_modules=list(target_modules), init_lora_weights=False, **settings)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # updates of a fine-tune's size: s * B @ A about 1e-2
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.mul_(0.1)
    peft_model.save_pretrained(str(path), safe_serialization=safe_serialization)
    return Path(path)
