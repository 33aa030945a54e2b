"""LoRA adapters as merge sources: `model: BASE+ADAPTER`, mergekit's syntax.

ADAPTER is a PEFT LoRA adapter (a directory or Hub id holding `adapter_config.json` and
`adapter_model.safetensors`). Its update is applied to each base tensor as that tensor is read,
so nothing is materialized beforehand (mergekit merges the whole adapter model into its
`--lora-merge-cache` first): for a module with factors A (r x in) and B (out x r),

    W' = W + s * B @ A,    s = lora_alpha / r   (lora_alpha / sqrt(r) with use_rslora)

with `r` and `lora_alpha` per module from `rank_pattern` / `alpha_pattern` (Hu et al., 2021;
PEFT's merge_and_unload). Embeddings store the product transposed. A tensor the adapter
saved whole (`modules_to_save`, or an embedding's `base_layer`) replaces the base's. The update
is computed in float32 (PEFT upcasts half-precision adapters when loading them) and the sum
rounded to the base tensor's dtype once; an embedding's update is rounded before the addition.
Both as PEFT's merge does, so a half-precision base gives PEFT's merged tensors bit for bit.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex
import torch

from evomerge.errors import MergeError, preview
from evomerge.merge.confine import ModelRoot
from evomerge.merge.io import CheckpointReader, TensorInfo, resolve_model_dir

SEPARATOR = "+"
ADAPTER_CONFIG = "adapter_config.json"
SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
PREFIX = "base_model.model."  # PEFT's prefix of every saved tensor name
# Saved-name suffix -> (factor, whether the product is stored transposed: embeddings).
_FACTORS = {
    ".lora_A.weight": ("A", False),
    ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True),
    ".lora_embedding_B": ("B", True),
}
_BASE_LAYER = ".base_layer.weight"
# rank_pattern / alpha_pattern keys are regular expressions from the adapter's file. PEFT writes
# module names or short alternations (under 200 characters); longer ones are refused.
MAX_PATTERN_CHARS = 1000
# Seconds all of an adapter's pattern matching may take: real patterns match in microseconds;
# one that backtracks catastrophically ((a|aa)+ on a long name) would run for hours.
MAX_PATTERN_SECONDS = 2.0
# PEFT features whose merge is not W + s * B @ A: refused by name rather than merged wrongly.
_UNSUPPORTED_CONFIG = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "LoRA biases (lora_bias)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable_token_indices",
    "target_parameters": "target_parameters",
}


def split_adapter(ref: str) -> tuple[str, str | None]:
    """`BASE+ADAPTER` -> (BASE, ADAPTER); a plain reference -> (ref, None)."""
    if SEPARATOR not in ref:
        return ref, None
    parts = ref.split(SEPARATOR)
    if len(parts) != 2 or not all(parts):
        raise MergeError(
            f"model {preview(ref)}: a LoRA source is BASE+ADAPTER (one '+', both parts non-empty)"
        )
    return parts[0], parts[1]


@dataclass(frozen=True)
class LoraUpdate:
    """The low-rank update of one base tensor: adapter tensor names and the scaling s."""

    lora_a: str
    lora_b: str
    scaling: float
    transposed: bool  # embeddings (and fan_in_fan_out layers) hold (B @ A).T
    embedding: bool  # PEFT rounds an embedding's update to the weight's dtype before adding


@dataclass(frozen=True)
class Adapter:
    ref: str  # the whole BASE+ADAPTER reference, for messages
    reader: CheckpointReader
    config: Mapping[str, Any]
    updates: Mapping[str, LoraUpdate]  # base tensor name -> its update
    replacements: Mapping[str, str]  # base tensor name -> adapter tensor saved whole


def open_source(ref: str, directory: Path, *, allow_pickle: bool = False) -> CheckpointReader:
    """The reader of a model reference: the checkpoint in `directory` (BASE's for a LoRA
    source), with ADAPTER's update applied per tensor when `ref` is BASE+ADAPTER."""
    reader = CheckpointReader.open(directory, allow_pickle=allow_pickle)
    adapter_ref = split_adapter(ref)[1]
    if adapter_ref is None:
        return reader
    adapter = read_adapter(ref, resolve_model_dir(adapter_ref), allow_pickle=allow_pickle)
    check_fits(adapter, reader)
    return AdaptedReader(reader, adapter)


def read_adapter(ref: str, directory: Path, *, allow_pickle: bool = False) -> Adapter:
    """Parse a PEFT LoRA adapter directory (config and tensor headers; no weights read)."""
    config = _read_config(ref, directory)
    safe, pickled = directory / SAFE_WEIGHTS, directory / PICKLE_WEIGHTS
    if safe.is_file():
        reader = CheckpointReader.open_files(directory, [safe])
    elif pickled.is_file() and not allow_pickle:
        raise MergeError(
            f"model {preview(ref)}: the adapter has only {PICKLE_WEIGHTS}, a pickle that can run code "
            "when loaded; convert it to safetensors, or pass --allow-pickle"
        )
    elif pickled.is_file():
        reader = CheckpointReader.open_files(directory, [pickled], allow_pickle=True)
    else:
        raise MergeError(
            f"model {preview(ref)}: no {SAFE_WEIGHTS} in adapter directory {directory}"
        )
    updates, replacements = _parse_tensors(ref, config, reader)
    return Adapter(ref, reader, config, updates, replacements)


def _read_config(ref: str, directory: Path) -> dict[str, Any]:
    root = ModelRoot.of(directory)  # the adapter is a model root of its own
    path = directory / ADAPTER_CONFIG
    if not root.exists(ADAPTER_CONFIG):
        raise MergeError(
            f"model {preview(ref)}: no {ADAPTER_CONFIG} in {directory}; the part after '+' must be "
            "a PEFT LoRA adapter"
        )
    config = root.read_json(ADAPTER_CONFIG)  # inside the root; errors never quote contents
    if not isinstance(config, dict):
        raise MergeError(f"model {preview(ref)}: {path} must hold a JSON object")
    if config.get("peft_type") != "LORA":
        raise MergeError(
            f"model {preview(ref)}: adapter peft_type is {preview(config.get('peft_type'))}; only LORA "
            "adapters can be merged"
        )
    for key, what in _UNSUPPORTED_CONFIG.items():
        if config.get(key):
            raise MergeError(
                f"model {preview(ref)}: the adapter uses {what}, which is not supported"
            )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise MergeError(
                f"model {preview(ref)}: {path} {key} must be a positive number, got {preview(value)}"
            )
    return config


def _parse_tensors(
    ref: str, config: Mapping[str, Any], reader: CheckpointReader
) -> tuple[dict[str, LoraUpdate], dict[str, str]]:
    """(updates, replacements) keyed by the base tensor each one changes."""
    factors: dict[str, dict[str, str]] = {}
    transposed: dict[str, bool] = {}
    replacements: dict[str, str] = {}
    for name in reader.names():
        if not name.startswith(PREFIX):
            raise MergeError(
                f"model {preview(ref)}: adapter tensor {name} is not named like a PEFT LoRA tensor "
                f"({PREFIX}...)"
            )
        key = name.removeprefix(PREFIX)
        suffix = next((s for s in _FACTORS if key.endswith(s)), None)
        if suffix is not None:
            module = key.removesuffix(suffix)
            factor, transposed[module] = _FACTORS[suffix]
            factors.setdefault(module, {})[factor] = name
        elif key.endswith(_BASE_LAYER):
            replacements[key.removesuffix(_BASE_LAYER) + ".weight"] = name
        elif "lora_" in key or "magnitude" in key or "trainable_tokens" in key:
            raise MergeError(
                f"model {preview(ref)}: adapter tensor {name} is of an unsupported kind"
            )
        else:  # modules_to_save: the module's tensors saved whole
            replacements[key] = name
    updates = {}
    deadline = time.monotonic() + MAX_PATTERN_SECONDS  # for all of the adapter's matching
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise MergeError(
                f"model {preview(ref)}: adapter has lora_A or lora_B of {module} alone"
            )
        updates[module + ".weight"] = _update(
            ref, config, reader, module, pair, transposed[module], deadline
        )
    if not updates and not replacements:
        raise MergeError(f"model {preview(ref)}: the adapter holds no LoRA tensors")
    return updates, replacements


def _update(
    ref: str,
    config: Mapping[str, Any],
    reader: CheckpointReader,
    module: str,
    pair: Mapping[str, str],
    embedding: bool,
    deadline: float,
) -> LoraUpdate:
    a, b = reader.info(pair["A"]).shape, reader.info(pair["B"]).shape
    r = _pattern_value(
        ref, config.get("rank_pattern") or {}, "rank_pattern", module, config["r"], deadline
    )
    alpha = _pattern_value(
        ref,
        config.get("alpha_pattern") or {},
        "alpha_pattern",
        module,
        config["lora_alpha"],
        deadline,
    )
    for key, value in (("r", r), ("lora_alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise MergeError(
                f"model {preview(ref)}: {ADAPTER_CONFIG} {key} of {module} must be a positive "
                f"number, got {preview(value)}"
            )
    if len(a) != 2 or len(b) != 2 or a[0] != r or b[1] != r:
        raise MergeError(
            f"model {preview(ref)}: adapter factors of {module} have shapes A {list(a)}, B {list(b)}; "
            f"expected rank {r} (r / rank_pattern in {ADAPTER_CONFIG})"
        )
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    flip = embedding or bool(config.get("fan_in_fan_out"))
    return LoraUpdate(pair["A"], pair["B"], scaling, flip, embedding)


def _pattern_value(
    ref: str, patterns: Any, key: str, module: str, default: Any, deadline: float
) -> Any:
    """PEFT's per-module override: the first pattern that matches the module name's end.

    The patterns come from the adapter's file: each is bounded in length, and matching (with
    `regex`, re's syntax, and a timeout) stops at the adapter's deadline, so a pattern that
    backtracks catastrophically is refused instead of hanging the merge."""
    where = f"model {preview(ref)}: {ADAPTER_CONFIG} {key}"
    if not isinstance(patterns, Mapping):
        raise MergeError(f"{where}: must be an object of pattern -> value")
    for pattern, value in patterns.items():
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
            raise MergeError(
                f"{where}: pattern {preview(pattern)} is not a string of at most "
                f"{MAX_PATTERN_CHARS} characters (MAX_PATTERN_CHARS)"
            )
        nested = _nested_repeat(pattern)
        if nested is not None:
            raise MergeError(
                f"{where}: pattern {preview(pattern)} repeats a group that itself repeats or "
                f"alternates (at character {nested}), which can backtrack catastrophically; "
                "refused"
            )
        try:
            found = regex.match(
                rf"(.*\.)?({pattern})$", module, timeout=max(deadline - time.monotonic(), 0)
            )
        except regex.error as e:
            raise MergeError(f"{where}: pattern {preview(pattern)} is not valid ({e})") from None
        except TimeoutError:
            raise MergeError(
                f"{where}: matching pattern {preview(pattern)} takes over "
                f"{MAX_PATTERN_SECONDS} s (catastrophic backtracking?); refused "
                "(MAX_PATTERN_SECONDS)"
            ) from None
        if found:
            return value
    return default


def _nested_repeat(pattern: str) -> int | None:
    """The position of a group repeated by *, + or {n,} whose body holds a repeat or an
    alternation ((a+)+, (a|aa)*: exponential backtracking), or None."""
    groups: list[bool] = []  # per open group: whether its body repeats or alternates
    i, risky_closed = 0, False
    while i < len(pattern):
        c = pattern[i]
        repeats = c in "*+" or (c == "{" and re.match(r"\{\d*,\d*\}|\{\d+\}", pattern[i:]))
        if repeats and risky_closed and not re.match(r"\{\d*,?1\}|\{[01]\}", pattern[i:]):
            return i
        risky_closed = False
        if c == "\\":
            i += 1
        elif c == "[":  # a character class: skip to its end
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("]", "^") else i + 1)
            i = len(pattern) if end < 0 else end
        elif c == "(":
            groups.append(False)
        elif c == ")" and groups:
            risky_closed = groups.pop()
            if groups:
                groups[-1] = groups[-1] or risky_closed
        elif (repeats or c == "|") and groups:
            groups[-1] = True
        i += 1
    return None


def check_fits(adapter: Adapter, base: CheckpointReader) -> None:
    """Every tensor the adapter changes exists in the base with the shape of the change."""
    targets = adapter.config.get("target_modules")
    for target, update in adapter.updates.items():
        a = adapter.reader.info(update.lora_a).shape
        b = adapter.reader.info(update.lora_b).shape
        shape: tuple[int, ...] = (a[1], b[0]) if update.transposed else (b[0], a[1])
        _check_target(adapter, base, target, shape, f"target_modules {targets}")
    for target, stored in adapter.replacements.items():
        shape = adapter.reader.info(stored).shape
        _check_target(adapter, base, target, shape, "modules_to_save")


def _check_target(
    adapter: Adapter, base: CheckpointReader, target: str, shape: tuple[int, ...], what: str
) -> None:
    base_ref = split_adapter(adapter.ref)[0]
    if target not in base:
        raise MergeError(
            f"model {preview(adapter.ref)}: the adapter changes {target}, which base {preview(base_ref)} does "
            f"not have ({what} do not fit this base: an adapter for another architecture?)"
        )
    if base.info(target).shape != shape:
        raise MergeError(
            f"model {preview(adapter.ref)}: the adapter changes {target} with shape {list(shape)}, but "
            f"base {preview(base_ref)} has {list(base.info(target).shape)} (an adapter of another base "
            "model, or one that resized the vocabulary?)"
        )


class AdaptedReader(CheckpointReader):
    """A base checkpoint seen through a LoRA adapter: each tensor is read with its update."""

    def __init__(self, base: CheckpointReader, adapter: Adapter):
        super().__init__(base.directory, {}, {})
        self.base = base
        self.adapter = adapter

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def __contains__(self, name: str) -> bool:
        return name in self.base

    def read(self, name: str) -> torch.Tensor:
        dtype = self.base.info(name).dtype
        stored = self.adapter.replacements.get(name)
        tensor = self.adapter.reader.read(stored).to(dtype) if stored else self.base.read(name)
        update = self.adapter.updates.get(name)
        return tensor if update is None else apply_update(tensor, update, self.adapter.reader)


def apply_update(
    weight: torch.Tensor, update: LoraUpdate, reader: CheckpointReader
) -> torch.Tensor:
    """W + s * B @ A, computed as PEFT's merge does (float32 at least, one rounding)."""
    a, b = reader.read(update.lora_a), reader.read(update.lora_b)
    compute = torch.promote_types(a.dtype, torch.float32)
    delta = b.to(compute) @ a.to(compute)  # (out, r) @ (r, in)
    if update.transposed:
        delta = delta.T
    delta = delta * update.scaling
    if update.embedding:  # PEFT's Embedding.merge: weight += delta.to(weight.dtype)
        return weight + delta.to(weight.dtype)
    wide = torch.promote_types(weight.dtype, delta.dtype)
    return (weight.to(wide) + delta).to(weight.dtype)
