"""Merge recipes: mergekit-compatible YAML <-> frozen dataclasses, validated with key paths.

A recipe names a merge method and its inputs, either as whole `models` (every layer) or as
`slices` (layer ranges per source, concatenated in order). Parameter values take one of three
forms, as in mergekit:

- a scalar (`weight: 0.5`),
- a gradient list (`weight: [0, 0.5, 1]`), interpolated linearly over a slice's layers,
- a list of `{filter, value}` conditions; the first whose filter is a substring of the tensor
  name (or is missing / `*`) applies.

Extensions are additive keys that mergekit ignores: `random_seed` and `drop_scheme` (DARE's
and DELLA's drop masks: `counter`, a keyed hash of the entry index, or `torch_cpu`, torch's CPU
generator, which a recipe without the key uses, as recipes written before the key did),
`tie_rule` (which of equal magnitudes a selection keeps: see merge/selection.py) and a slice's
`input_scale` (data-flow merges: the hidden state entering the slice is multiplied by it;
passthrough folds it into the weights, see merge/plan.py).

This module checks a recipe's syntax (keys, shapes, value types). What depends on the merge
method (its name, parameters, base model, model counts) is checked by
`evomerge.merge.check_recipe`, which every merge runs before it reads a tensor.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from evomerge.errors import RecipeError, preview, preview_key
from evomerge.recipe_tokenizer import TokenizerSpec, parse_tokenizer
from evomerge.yaml_limits import load_yaml, read_source

Scalar: TypeAlias = bool | int | float | str
Gradient: TypeAlias = tuple[Scalar, ...]


@dataclass(frozen=True)
class Condition:
    """One `{filter, value}` entry: `value` applies to tensors whose name contains `filter`."""

    value: Scalar | Gradient
    filter: str | None = None


ParameterValue: TypeAlias = Scalar | Gradient | tuple[Condition, ...]
Parameters: TypeAlias = Mapping[str, ParameterValue]


@dataclass(frozen=True)
class ModelSpec:
    model: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class SourceSpec:
    model: str
    layer_range: tuple[int, int]
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSpec:
    sources: tuple[SourceSpec, ...]
    parameters: Parameters = field(default_factory=dict)
    base_model: str | None = None
    input_scale: float | None = None  # extension: scales the hidden state entering the slice


@dataclass(frozen=True)
class Recipe:
    """A merge recipe. Exactly one of `models` and `slices` is non-empty."""

    merge_method: str
    models: tuple[ModelSpec, ...] = ()
    slices: tuple[SliceSpec, ...] = ()
    base_model: str | None = None
    parameters: Parameters = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    random_seed: int | None = None
    drop_scheme: str | None = None  # None: torch_cpu (see merge/drops.py)
    tie_rule: str | None = None  # None: mergekit (see merge/selection.py)
    tokenizer: TokenizerSpec | None = None  # vocabulary merging (evomerge/recipe_tokenizer.py)

    def referenced_models(self) -> tuple[str, ...]:
        """Every model the recipe reads, base first, each once, in recipe order."""
        names = [self.base_model] if self.base_model else []
        names += [m.model for m in self.models]
        for s in self.slices:
            names += [s.base_model] if s.base_model else []
            names += [src.model for src in s.sources]
        return tuple(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        """Plain mergekit-layout dict (lists and dicts only), keys in the canonical order."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        keys = ("base_model", "dtype", "out_dtype", "tokenizer_source", "random_seed")
        for key in (*keys, "drop_scheme", "tie_rule"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.parameters:
            out["parameters"] = _parameters_to_dict(self.parameters)
        if self.models:
            out["models"] = [
                _with_parameters({"model": m.model}, m.parameters) for m in self.models
            ]
        if self.slices:
            out["slices"] = [_slice_to_dict(s) for s in self.slices]
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer.to_dict()
        return out


DTYPES = ("float32", "float16", "bfloat16", "float64")
_TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "random_seed",
    "drop_scheme",
    "tie_rule",
    "tokenizer",
)
DROP_SCHEMES = ("torch_cpu", "counter")  # merge/drops.py
TIE_RULES = ("mergekit", "threshold")  # merge/selection.py
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# mergekit keys we accept and ignore (documented in the README): they do not change tensors.
_IGNORED_TOP_KEYS = ("name", "chat_template")


def load_recipe(source: str | Path) -> Recipe:
    """Parse a recipe from a YAML file path or from YAML text (yaml.safe_load only); syntax
    only (see `evomerge.merge.check_recipe`)."""
    text, where = read_source(source)
    data = load_yaml(text, where)
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return parse_recipe(data)


def dump_recipe(recipe: Recipe) -> str:
    """Deterministic YAML: canonical key order, parameters sorted, floats in repr form."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None, width=100)


def parse_recipe(data: Mapping[str, Any]) -> Recipe:
    """A mergekit-style mapping as a Recipe, its syntax checked; errors start with the key path."""
    _check_keys(data, _TOP_KEYS + _IGNORED_TOP_KEYS, "")
    method_name = _require_str(data, "merge_method", "")
    if data.get("tokenizer_source") is not None and data.get("tokenizer") is not None:
        raise RecipeError(
            "tokenizer: give either tokenizer_source or a tokenizer section, not both"
        )
    for key in ("models", "slices"):
        if data.get(key) is not None and not isinstance(data[key], list):
            raise RecipeError(f"{key}: must be a list, got {preview(data[key])}")
    has_models, has_slices = bool(data.get("models")), bool(data.get("slices"))
    if has_models == has_slices:
        raise RecipeError("recipe: give exactly one of `models` or `slices` (a non-empty list)")
    return Recipe(
        merge_method=method_name,
        base_model=_optional_str(data, "base_model", ""),
        parameters=_parse_parameters(data.get("parameters"), "parameters"),
        dtype=_optional_dtype(data, "dtype"),
        out_dtype=_optional_dtype(data, "out_dtype"),
        tokenizer_source=_optional_str(data, "tokenizer_source", ""),
        random_seed=_optional_int(data, "random_seed"),
        drop_scheme=_optional_choice(data, "drop_scheme", DROP_SCHEMES),
        tie_rule=_optional_choice(data, "tie_rule", TIE_RULES),
        tokenizer=parse_tokenizer(data.get("tokenizer")),
        models=tuple(
            _parse_model(m, f"models[{i}]") for i, m in enumerate(data.get("models") or ())
        ),
        slices=tuple(
            _parse_slice(s, f"slices[{i}]") for i, s in enumerate(data.get("slices") or ())
        ),
    )


# --- parsing helpers -------------------------------------------------------------------------


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    unknown = sorted(preview_key(k) for k in data if k not in allowed)
    if unknown:
        where = f"{path}." if path else ""
        raise RecipeError(
            f"{where}{unknown[0]}: unknown key; valid keys here: {', '.join(allowed)}"
        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _require_str(data: Mapping[str, Any], key: str, path: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{_join(path, key)}: must be a non-empty string, got {preview(value)}")
    return value


def _optional_str(data: Mapping[str, Any], key: str, path: str) -> str | None:
    return None if data.get(key) is None else _require_str(data, key, path)


def _optional_dtype(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and value not in DTYPES:
        raise RecipeError(f"{key}: must be one of {', '.join(DTYPES)}, got {preview(value)}")
    return value


def _optional_choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str | None:
    value = data.get(key)
    if value is not None and value not in choices:
        raise RecipeError(f"{key}: must be one of {', '.join(choices)}, got {value!r:.60}")
    return value


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecipeError(f"{key}: must be an integer, got {preview(value)}")
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecipeError(f"{path}: must be a mapping, got {preview(value)}")
    return value


def _parse_model(value: Any, path: str) -> ModelSpec:
    if isinstance(value, str):  # shorthand `- path/to/model`
        value = {"model": value}
    data = _mapping(value, path)
    _check_keys(data, ("model", "parameters"), path)
    params = _parse_parameters(data.get("parameters"), f"{path}.parameters")
    return ModelSpec(model=_require_str(data, "model", path), parameters=params)


def _parse_slice(value: Any, path: str) -> SliceSpec:
    data = _mapping(value, path)
    _check_keys(data, ("sources", "parameters", "base_model", "input_scale"), path)
    sources = data.get("sources")
    if not isinstance(sources, list) or not sources:
        raise RecipeError(f"{path}.sources: must be a non-empty list, got {preview(sources)}")
    return SliceSpec(
        sources=tuple(_parse_source(s, f"{path}.sources[{i}]") for i, s in enumerate(sources)),
        parameters=_parse_parameters(data.get("parameters"), f"{path}.parameters"),
        base_model=_optional_str(data, "base_model", path),
        input_scale=_optional_scale(data.get("input_scale"), f"{path}.input_scale"),
    )


def _optional_scale(value: Any, path: str) -> float | None:
    if value is None:
        return None
    value = _parse_scalar(value, path)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise RecipeError(f"{path}: must be a positive number, got {preview(value)}")
    return float(value)


def _parse_source(value: Any, path: str) -> SourceSpec:
    data = _mapping(value, path)
    _check_keys(data, ("model", "layer_range", "parameters"), path)
    lr = data.get("layer_range")
    if (
        not isinstance(lr, list | tuple)
        or len(lr) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
        or not 0 <= lr[0] < lr[1]
    ):
        raise RecipeError(
            f"{path}.layer_range: must be [start, end] with 0 <= start < end, got {preview(lr)}"
        )
    return SourceSpec(
        model=_require_str(data, "model", path),
        layer_range=(lr[0], lr[1]),
        parameters=_parse_parameters(data.get("parameters"), f"{path}.parameters"),
    )


def _parse_parameters(value: Any, path: str) -> dict[str, ParameterValue]:
    if value is None:
        return {}
    data = _mapping(value, path)
    for k in data:
        if not isinstance(k, str):
            raise RecipeError(f"{path}.{preview_key(k)}: a parameter name must be a string")
    return {k: _parse_value(v, f"{path}.{preview_key(k)}") for k, v in data.items()}


def _parse_scalar(value: Any, path: str) -> Scalar:
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads `1e-3` as a string; mergekit treats it as a number
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{path}: must be a finite number, got {preview(value)}")
    if isinstance(value, int) and abs(value) > sys.float_info.max:  # float(value) would overflow
        raise RecipeError(
            f"{path}: must be a finite number, got an integer of {len(str(value))} digits"
        )
    if isinstance(value, bool | int | float | str):
        return value
    raise RecipeError(f"{path}: must be a number, boolean or string, got {preview(value)}")


def _parse_value(value: Any, path: str) -> ParameterValue:
    if isinstance(value, Mapping):  # a single condition, as mergekit allows
        value = [value]
    if not isinstance(value, list | tuple):
        return _parse_scalar(value, path)
    if not value:
        raise RecipeError(f"{path}: an empty list is not a value; give a scalar or a gradient")
    if all(isinstance(v, Mapping) for v in value):
        return tuple(_parse_condition(v, f"{path}[{i}]") for i, v in enumerate(value))
    return tuple(_parse_scalar(v, f"{path}[{i}]") for i, v in enumerate(value))


def _parse_condition(value: Mapping[str, Any], path: str) -> Condition:
    _check_keys(value, ("filter", "value"), path)
    if "value" not in value:
        raise RecipeError(f"{path}.value: missing; a condition is {{filter: NAME, value: X}}")
    raw = value["value"]
    parsed = (
        tuple(_parse_scalar(v, f"{path}.value[{i}]") for i, v in enumerate(raw))
        if isinstance(raw, list | tuple)
        else _parse_scalar(raw, f"{path}.value")
    )
    filt = value.get("filter")
    if filt is not None and not isinstance(filt, str):
        raise RecipeError(f"{path}.filter: must be a string, got {preview(filt)}")
    return Condition(value=parsed, filter=filt)


# --- dumping helpers -------------------------------------------------------------------------


def _value_to_plain(value: ParameterValue) -> Any:
    if isinstance(value, tuple):
        return [_condition_to_plain(v) if isinstance(v, Condition) else v for v in value]
    return value


def _condition_to_plain(c: Condition) -> dict[str, Any]:
    out: dict[str, Any] = {} if c.filter is None else {"filter": c.filter}
    out["value"] = list(c.value) if isinstance(c.value, tuple) else c.value
    return out


def _parameters_to_dict(params: Parameters) -> dict[str, Any]:
    return {k: _value_to_plain(params[k]) for k in sorted(params)}


def _with_parameters(out: dict[str, Any], params: Parameters) -> dict[str, Any]:
    if params:
        out["parameters"] = _parameters_to_dict(params)
    return out


def _slice_to_dict(s: SliceSpec) -> dict[str, Any]:
    sources = [
        _with_parameters({"model": src.model, "layer_range": list(src.layer_range)}, src.parameters)
        for src in s.sources
    ]
    out: dict[str, Any] = {"sources": sources}
    if s.base_model is not None:
        out["base_model"] = s.base_model
    if s.input_scale is not None:
        out["input_scale"] = s.input_scale
    return _with_parameters(out, s.parameters)
