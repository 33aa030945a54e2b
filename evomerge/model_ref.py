"""Model references, as `models.sources`, `models.base_model` and `eval model=` name them: a
local directory, a Hugging Face Hub id, or `toy:<member>` (the embedded toy family, built on
first use), `packaged:<name>` (a model shipped in a Python package, converted once into the
cache: evomerge/real/); `BASE+ADAPTER` is BASE with a LoRA adapter (merge/lora.py applies it). Resolution and metadata only; reading a model's files is the merge core's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError, preview
from evomerge.real.packaged import PACKAGED_PREFIX

TOY_PREFIX = "toy:"
ADAPTER_SEPARATOR = "+"  # mergekit's BASE+ADAPTER; merge/lora.py checks the form
# The most decoder layers a model, or a merge's output, may have: the deepest released models
# have about 130 (Llama 3.1 405B: 126), and a DFS export lays out M models r times (the paper:
# r = 3), under 1,000 for a few such models. Past this a count is not a model's: lists indexed
# by layer would exhaust memory, and a recipe whose slices repeat (a YAML alias) would write
# an output thousands of times its size.
MAX_LAYERS = 2048


def resolve_reference(ref: str, toy_size: str = "full") -> str:
    """`toy:<member>` -> the cached toy model directory (built on first use), `packaged:<name>`
    -> the cached conversion (converted on first use); others unchanged.
    A LoRA source `BASE+ADAPTER` resolves each part."""
    if ADAPTER_SEPARATOR in ref:
        base, _, adapter = ref.partition(ADAPTER_SEPARATOR)
        return f"{resolve_reference(base, toy_size)}+{resolve_reference(adapter, toy_size)}"
    if ref.startswith(TOY_PREFIX):
        from evomerge.toy import ensure_family

        return str(ensure_family(size=toy_size).path(ref.removeprefix(TOY_PREFIX)))
    if ref.startswith(PACKAGED_PREFIX):
        from evomerge.real import ensure_packaged

        return str(ensure_packaged(ref.removeprefix(PACKAGED_PREFIX)))
    return ref


def model_config(model: str) -> dict[str, Any]:
    """A local directory's config.json, or a Hub model's config (BASE's for BASE+ADAPTER)."""
    from evomerge.merge.confine import ModelRoot  # late: the merge core imports torch

    model = model.partition(ADAPTER_SEPARATOR)[0]
    root = ModelRoot.of(model)
    if Path(model).is_dir() and root.exists("config.json"):  # read inside the model's root
        config: dict[str, Any] = root.read_json("config.json")
        if not isinstance(config, dict):
            raise ConfigError(f"models: {preview(model)}/config.json must hold a JSON object")
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model).to_dict()
        except OSError as e:
            raise ConfigError(f"models: cannot read the config of {model!r}: {e}") from e
    return config


def num_layers_of(model: str) -> int:
    """`num_hidden_layers` from the model's config (or its text config)."""
    config = model_config(model)
    text_config = config.get("text_config")
    n = config.get("num_hidden_layers")
    if n is None and isinstance(text_config, dict):
        n = text_config.get("num_hidden_layers")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"models: {preview(model)} has no num_hidden_layers in its config")
    if n > MAX_LAYERS:
        raise ConfigError(
            f"models: {preview(model)} has num_hidden_layers {n}, over {MAX_LAYERS} (MAX_LAYERS)"
        )
    return n
