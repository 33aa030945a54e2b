"""Deterministic synthetic Llama checkpoints for merge benchmarks: a base and "fine-tunes".

A fine-tune is the base plus small seeded noise (fine-tune-sized deltas), so TIES/DARE see
realistic task vectors. Every tensor is drawn from a generator seeded by (seed, tensor name),
so the same arguments give the same bytes; a finished checkpoint is cached by its directory
(written to `<name>.partial` and renamed, so the rename marks completion).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from evomerge.merge.io import ShardedWriter
from evomerge_dev.testing import tiny_config, write_tiny_tokenizer

HIDDEN, VOCAB = 2048, 32000  # TinyLlama-like widths (its MLP is 2.75 x hidden)
NOISE = 0.002  # fine-tune-sized deltas relative to 0.02-scale weights


def config_for(params: float, dtype: str = "bfloat16", hidden: int = HIDDEN) -> dict[str, Any]:
    """A Llama config of width `hidden` with as many layers as bring it closest to `params`
    parameters (at least one)."""
    if hidden % 16:
        raise ValueError(f"hidden: must be a multiple of 16 (16 heads), got {hidden}")
    config = tiny_config("llama", 1, hidden, VOCAB, False)
    config.update(intermediate_size=hidden * 11 // 4, num_attention_heads=16)
    config.update(num_key_value_heads=4, head_dim=hidden // 16, dtype=dtype)
    per_layer = parameter_count(config) - 2 * VOCAB * hidden - hidden
    config["num_hidden_layers"] = max(1, round((params - 2 * VOCAB * hidden) / per_layer))
    return config


def tensor_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    return [*shapes, ("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def parameter_count(config: dict[str, Any]) -> int:
    total = 0
    for _, shape in tensor_shapes(config):
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def generate(
    path: Path, config: dict[str, Any], *, seed: int, base_seed: int | None, shard_size: int
) -> Path:
    """Write one checkpoint to `path` unless it exists: the base (base_seed None) or a
    fine-tune = base(base_seed) + NOISE * noise(seed)."""
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = getattr(torch, config["dtype"])
    shapes = tensor_shapes(config)
    writer = ShardedWriter(tmp, shard_size, [(name, shape, dtype) for name, shape in shapes])
    for name, shape in shapes:
        scale, offset = (0.1, 1.0) if name.endswith("norm.weight") else (0.02, 0.0)
        first = seed if base_seed is None else base_seed
        tensor = torch.randn(shape, generator=_generator(first, name)).mul_(scale).add_(offset)
        if base_seed is not None:
            tensor.add_(torch.randn(shape, generator=_generator(seed, name)), alpha=NOISE)
        writer.add(name, tensor.to(dtype))
        del tensor
    writer.finish()
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_tiny_tokenizer(tmp, 64)
    tmp.rename(path)
    return path


def generate_family(
    root: Path,
    params: float,
    *,
    dtype: str = "bfloat16",
    hidden: int = HIDDEN,
    shard_size: int = 500 * 10**6,
) -> tuple[Path, Path, Path]:
    """(base, ft1, ft2) under root/<layers>L[-h<hidden>]-<dtype>-<shard bytes>/ (cached)."""
    config = config_for(params, dtype, hidden)
    width = "" if hidden == HIDDEN else f"-h{hidden}"
    folder = root / f"{config['num_hidden_layers']}L{width}-{dtype}-{shard_size}"
    base = generate(folder / "base", config, seed=0, base_seed=None, shard_size=shard_size)
    ft1 = generate(folder / "ft1", config, seed=1, base_seed=0, shard_size=shard_size)
    ft2 = generate(folder / "ft2", config, seed=2, base_seed=0, shard_size=shard_size)
    return base, ft1, ft2
