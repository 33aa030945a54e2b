"""Layer naming of Llama-family decoders, and the config of a merged model.

Supported: Llama, Mistral, Qwen2 and Gemma (tied embeddings: no `lm_head.weight`, the head reads
`model.embed_tokens.weight`). Their tensors are `model.layers.{i}.<suffix>` per decoder layer,
plus a few global ones (`model.embed_tokens.weight` before the layers, `model.norm.weight` and
`lm_head.weight` after).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.errors import MergeError, preview
from evomerge.merge.confine import ModelRoot
from evomerge.merge.io import CheckpointReader, TensorInfo
from evomerge.model_ref import MAX_LAYERS

SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
}
# Config keys that must agree for tensors of two models to be merged position by position.
COMPATIBILITY_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
LM_HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"
# Tensor-name prefixes of the parts that are no decoder layer (the PS genome's groups).
EMBED_FILTERS = ("model.embed_tokens",)
HEAD_FILTERS = ("model.norm.", "lm_head")  # the final norm and the output head
# Modules of a decoder layer whose outputs join the residual stream: data-flow scales fold here.
RESIDUAL_WRITERS = ("self_attn.o_proj", "mlp.down_proj")


def layer_prefix(index: int) -> str:
    """The prefix of decoder layer `index`'s tensor names."""
    return f"model.layers.{index}."


def layer_tensor(index: int, suffix: str) -> str:
    return f"{layer_prefix(index)}{suffix}"


def writes_residual(suffix: str) -> bool:
    """Whether a layer tensor (`suffix` after the layer prefix) belongs to a residual writer."""
    return suffix.startswith(tuple(f"{module}." for module in RESIDUAL_WRITERS))


def is_head(name: str) -> bool:
    """The output head's tensors (absent from a checkpoint with tied embeddings)."""
    return name.startswith("lm_head.")


@dataclass(frozen=True)
class ModelLayout:
    """What the planner needs to know about one source checkpoint, without its weights."""

    ref: str
    config: Mapping[str, Any]
    tensors: Mapping[str, TensorInfo]
    num_layers: int
    layer_suffixes: tuple[str, ...]  # of any layer, in checkpoint order
    global_tensors: tuple[str, ...]  # non-layer tensors, pre (embeddings) first

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", self.config["model_type"] == "gemma"))

    def source_name(self, name: str) -> str | None:
        """The stored tensor that holds `name` here (a tied head reads the embeddings)."""
        if name in self.tensors:
            return name
        if name == LM_HEAD and self.tied and EMBED in self.tensors:
            return EMBED
        return None


def read_config(directory: Path, ref: str) -> dict[str, Any]:
    """config.json, read inside the model's root (see confine.py)."""
    root = ModelRoot.of(directory)
    if not root.exists("config.json"):
        raise MergeError(f"model {preview(ref)}: no config.json in {directory}")
    config = root.read_json("config.json")
    if not isinstance(config, dict):
        raise MergeError(
            f"model {preview(ref)}: {directory / 'config.json'} must hold a JSON object"
        )
    return config


def describe_model(ref: str, config: Mapping[str, Any], reader: CheckpointReader) -> ModelLayout:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        archs = config.get("architectures")
        raise MergeError(
            f"model {preview(ref)}: architecture {preview(model_type)} ({archs}) is not supported; "
            f"supported model types: {', '.join(SUPPORTED)}"
        )
    num_layers = config.get("num_hidden_layers")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise MergeError(
            f"model {preview(ref)}: config.json num_hidden_layers is {preview(num_layers)}"
        )
    if num_layers > MAX_LAYERS:
        raise MergeError(
            f"model {preview(ref)}: config.json num_hidden_layers is {num_layers}, over "
            f"{MAX_LAYERS} (MAX_LAYERS)"
        )
    tensors = {name: reader.info(name) for name in reader.names()}
    scalars = [name for name, info in tensors.items() if not info.shape]
    if scalars:  # methods that rank entries within rows (della) have no row to rank
        raise MergeError(
            f"model {preview(ref)}: tensor {preview(scalars[0])} is a scalar (0-dim); "
            "Llama-family checkpoints hold none"
        )
    layers: dict[int, list[str]] = {}
    global_names = []
    for name in tensors:
        match = _LAYER.fullmatch(name)
        if match:
            layers.setdefault(int(match.group(1)), []).append(match.group(2))
        else:
            global_names.append(name)
    _check_layers(ref, layers, num_layers)
    check_shapes(ref, config, tensors)
    pre = sorted(n for n in global_names if "embed" in n)
    post = sorted((n for n in global_names if "embed" not in n), key=lambda n: n == LM_HEAD)
    return ModelLayout(
        ref=ref,
        config=config,
        tensors=tensors,
        num_layers=num_layers,
        # A tensor missing from some layer is reported by the planner, naming it.
        layer_suffixes=tuple(dict.fromkeys(x for i in sorted(layers) for x in layers[i])),
        global_tensors=tuple(pre + post),
    )


def _check_layers(ref: str, layers: Mapping[int, list[str]], num_layers: int) -> None:
    # the indices are 0..num_layers-1 when there are num_layers distinct ones in that range
    if len(layers) != num_layers or any(not 0 <= i < num_layers for i in layers):
        raise MergeError(
            f"model {preview(ref)}: config.json says {num_layers} layers but the checkpoint has "
            f"tensors for layers {preview(sorted(layers))}"
        )


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name (or layer suffix) -> the shape config.json gives it, as transformers builds
    the Llama family's modules; {} when the config lacks a size (nothing is checked then)."""
    keys = ("hidden_size", "intermediate_size", "vocab_size", "num_attention_heads")
    sizes = [config.get(k) for k in keys]
    if not all(type(v) is int and v > 0 for v in sizes):
        return {}
    hidden, inter, vocab, heads = (int(v) for v in sizes)  # type: ignore[arg-type]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    if not (type(kv) is int and type(head_dim) is int and kv > 0 and head_dim > 0):
        return {}
    q, k = heads * head_dim, kv * head_dim
    return {
        EMBED: (vocab, hidden),
        LM_HEAD: (vocab, hidden),
        "model.norm.weight": (hidden,),
        "self_attn.q_proj.weight": (q, hidden),
        "self_attn.k_proj.weight": (k, hidden),
        "self_attn.v_proj.weight": (k, hidden),
        "self_attn.o_proj.weight": (hidden, q),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }


def check_shapes(ref: str, config: Mapping[str, Any], tensors: Mapping[str, TensorInfo]) -> None:
    """Every tensor whose shape config.json fixes has that shape (else the merged checkpoint
    is written and then fails to load); tensors it does not describe are not checked."""
    expected = expected_shapes(config)
    for name, info in tensors.items():
        match = _LAYER.fullmatch(name)
        want = expected.get(match.group(2) if match else name)
        if want is not None and info.shape != want:
            raise MergeError(
                f"model {preview(ref)}: tensor {name} has shape {list(info.shape)} but "
                f"config.json gives {list(want)} (hidden_size, intermediate_size, vocab_size, "
                "heads); the checkpoint does not match its config"
            )


def check_compatible(layouts: Sequence[ModelLayout], ignore: tuple[str, ...] = ()) -> None:
    """Every model must agree with the first on the keys that fix tensor shapes (but `ignore`)."""
    first = layouts[0]
    for other in layouts[1:]:
        for key in (k for k in COMPATIBILITY_KEYS if k not in ignore):
            a, b = first.config.get(key), other.config.get(key)
            if a != b:
                raise MergeError(
                    f"incompatible architectures: {key} is {preview(a)} in {preview(first.ref)} "
                    f"but {preview(b)} in {preview(other.ref)}"
                )


def output_config(
    reference: ModelLayout,
    layer_sources: Sequence[tuple[ModelLayout, int]],
    dtype_name: str,
) -> dict[str, Any]:
    """The reference config with the merged layer count (and per-layer lists) and dtype."""
    config = copy.deepcopy(dict(reference.config))
    config["num_hidden_layers"] = len(layer_sources)
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = [_layer_type(layout, i) for layout, i in layer_sources]
    config.pop("torch_dtype", None)
    config["dtype"] = dtype_name
    return config


def _layer_type(layout: ModelLayout, index: int) -> Any:
    types = layout.config.get("layer_types")
    return types[index] if isinstance(types, list) and index < len(types) else "full_attention"
