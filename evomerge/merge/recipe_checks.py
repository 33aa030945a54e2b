"""Recipe checks that need the method registry: parameter names, values, base model, counts.

The recipe module checks syntax only; these run on a parsed recipe, before any tensor is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from evomerge.errors import RecipeError, preview
from evomerge.merge.methods.base import REQUIRED, Method, Param
from evomerge.merge.methods.registry import get_method
from evomerge.model_ref import MAX_LAYERS
from evomerge.recipe import Condition, Parameters, ParameterValue, Recipe, SliceSpec

# A slice's input_scale is folded into the weights: the residual writers of a layer are divided
# by the product of the scales up to it. The paper's scales lie in [0.5, 2]; one of 1e300 turns
# the weights to zero (1e-200: to inf, or a division by zero). Each scale stays in
# [1/MAX_INPUT_SCALE, MAX_INPUT_SCALE] and the product in [1/MAX_SCALE_PRODUCT,
# MAX_SCALE_PRODUCT], where weights of magnitude 1e-4..10 divided by it stay normal float32 and
# bfloat16 numbers (1e+-38).
MAX_INPUT_SCALE = 1e6
MAX_SCALE_PRODUCT = 1e30


def check_recipe(recipe: Recipe) -> Recipe:
    """The recipe, once its method exists and takes what the recipe gives it: parameter names,
    types and ranges everywhere, the base model and the number of models."""
    check_recipe_for_method(get_method(recipe.merge_method, path="merge_method"), recipe)
    return recipe


def check_recipe_for_method(method: Method, recipe: Recipe) -> None:
    _check_slices(recipe.slices)  # first: bounds what the other checks walk
    check_distinct_models(recipe, os.path.normpath)
    _check_parameters(method, recipe.parameters, "parameters", per_model_only=False)
    for i, m in enumerate(recipe.models):
        _check_parameters(method, m.parameters, f"models[{i}].parameters", per_model_only=True)
    for i, s in enumerate(recipe.slices):
        _check_parameters(method, s.parameters, f"slices[{i}].parameters", per_model_only=False)
        for j, src in enumerate(s.sources):
            path = f"slices[{i}].sources[{j}].parameters"
            _check_parameters(method, src.parameters, path, per_model_only=True)
    if recipe.models:
        _check_models_form(method, recipe)
    for i in range(len(recipe.slices)):
        _check_slice(method, recipe, i)


def check_distinct_models(recipe: Recipe, same: Callable[[str], str]) -> None:
    """A model is listed once in `models`, and once among a slice's sources: mergekit keys
    inputs by model, so a second entry silently replaces the first. `same` maps a reference
    to what identifies the model (its normalized text here, its real directory at plan time).
    The base model may also be listed among the models, as mergekit allows."""
    groups = [[(f"models[{i}]", m.model) for i, m in enumerate(recipe.models)]]
    groups += [
        [(f"slices[{i}].sources[{j}]", src.model) for j, src in enumerate(s.sources)]
        for i, s in enumerate(recipe.slices)
    ]
    for group in groups:
        seen: dict[str, str] = {}
        for path, ref in group:
            first = seen.setdefault(same(ref), path)
            if first != path:
                raise RecipeError(
                    f"{path}.model: {preview(ref)} is the model of {first} too; list each "
                    "model once (a second entry would replace the first)"
                )


def _check_slices(slices: Sequence[SliceSpec]) -> None:
    """The output's layer count (each is written: one YAML alias can repeat a slice 60,000
    times) and the running product of the input scales, bounded."""
    layers = sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in slices)
    if layers > MAX_LAYERS:
        raise RecipeError(
            f"slices: {layers} output layers, over {MAX_LAYERS} (MAX_LAYERS, the most layers "
            "a model may have)"
        )
    product = 1.0
    for i, s in enumerate(slices):
        scale = 1.0 if s.input_scale is None else s.input_scale
        if not 1 / MAX_INPUT_SCALE <= scale <= MAX_INPUT_SCALE:
            raise RecipeError(
                f"slices[{i}].input_scale: must be a positive number in "
                f"[{1 / MAX_INPUT_SCALE:g}, {MAX_INPUT_SCALE:g}] (MAX_INPUT_SCALE), got {scale:g}"
            )
        product *= scale
        if not 1 / MAX_SCALE_PRODUCT <= product <= MAX_SCALE_PRODUCT:
            raise RecipeError(
                f"slices[{i}].input_scale: the product of the input scales up to here is "
                f"{product:g}, outside [{1 / MAX_SCALE_PRODUCT:g}, {MAX_SCALE_PRODUCT:g}] "
                "(MAX_SCALE_PRODUCT)"
            )


def _check_parameters(
    method: Method, params: Parameters, path: str, *, per_model_only: bool
) -> None:
    for name, value in params.items():
        if name in method.shared and per_model_only:
            raise RecipeError(
                f"{path}.{name}: is a global parameter of {method.name}; "
                "move it to the top-level (or slice) `parameters`"
            )
        param = method.parameters.get(name)
        if param is None:
            valid = ", ".join(sorted(method.parameters)) or "none"
            raise RecipeError(
                f"{path}.{name}: unknown parameter for {method.name}; valid parameters: {valid}"
            )
        _check_value(param, value, f"{path}.{name}")


def _check_value(param: Param, value: ParameterValue, path: str) -> None:
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            if isinstance(item, Condition):
                _check_value(param, item.value, f"{path}[{i}].value")
            else:
                _check_scalar(param, item, f"{path}[{i}]")
    else:
        _check_scalar(param, value, path)


def _check_scalar(param: Param, value: object, path: str) -> None:
    if value is None and param.optional:
        return
    param.check(value, path)


def _has_parameter(name: str, scopes: Sequence[Parameters]) -> bool:
    return any(name in scope for scope in scopes)


def _check_counts(method: Method, count: int, path: str, *, has_base: bool) -> None:
    low, high = method.min_models, method.max_models
    besides = " besides the base" if has_base else ""
    if count < low or (high is not None and count > high):
        rule = (
            f"exactly {low}"
            if low == high
            else f"at least {low}"
            if high is None
            else f"at most {high}"
        )
        raise RecipeError(f"{path}: {method.name} takes {rule} model(s){besides}, got {count}")


def _require_base(method: Method, base: str | None, path: str) -> str:
    if base is None:
        raise RecipeError(
            f"{path}: {method.name} needs a base model; add `base_model: <model>` to the recipe"
        )
    return base


def _check_models_form(method: Method, recipe: Recipe) -> None:
    base = recipe.base_model
    if method.needs_base:
        base = _require_base(method, base, "base_model")
    uses_base = method.uses_base and base is not None
    others = [m for m in recipe.models if m.model != base] if uses_base else recipe.models
    _check_counts(method, len(others), "models", has_base=uses_base)
    for name, param in method.per_model.items():
        if param.default is not REQUIRED:
            continue
        for i, m in enumerate(recipe.models):
            if m in others and not _has_parameter(name, [m.parameters, recipe.parameters]):
                raise RecipeError(
                    f"models[{i}].parameters.{name}: required by {method.name} "
                    "(or set it once in the top-level `parameters`)"
                )
    _check_shared_required(method, [recipe.parameters], "parameters")


def _check_slice(method: Method, recipe: Recipe, index: int) -> None:
    s = recipe.slices[index]
    path = f"slices[{index}]"
    if s.input_scale is not None and method.name != "passthrough":
        raise RecipeError(
            f"{path}.input_scale: only passthrough can fold a data-flow scale into weights, "
            f"got merge_method {preview(method.name)}"
        )
    lengths = {src.layer_range[1] - src.layer_range[0] for src in s.sources}
    if len(lengths) > 1:
        ranges = [list(src.layer_range) for src in s.sources]
        raise RecipeError(
            f"{path}.sources: every source of a slice needs the same number of layers, got {ranges}"
        )
    names = [src.model for src in s.sources]
    base = s.base_model or recipe.base_model
    if method.needs_base:
        base = _require_base(method, base, f"{path}.base_model")
    uses_base = method.uses_base and base is not None
    if uses_base:
        if base not in names:
            raise RecipeError(
                f"{path}.sources: the base model {preview(base)} must be one of the slice's sources"
            )
        names = [n for n in names if n != base]
    _check_counts(method, len(names), f"{path}.sources", has_base=uses_base)
    for name, param in method.per_model.items():
        if param.default is not REQUIRED:
            continue
        for j, src in enumerate(s.sources):
            scopes = [src.parameters, s.parameters, recipe.parameters]
            if src.model in names and not _has_parameter(name, scopes):
                raise RecipeError(
                    f"{path}.sources[{j}].parameters.{name}: required by {method.name} "
                    "(or set it in the slice or top-level `parameters`)"
                )
    _check_shared_required(method, [s.parameters, recipe.parameters], f"{path}.parameters")


def _check_shared_required(method: Method, scopes: Sequence[Parameters], path: str) -> None:
    for name, param in method.shared.items():
        if param.default is REQUIRED and not _has_parameter(name, scopes):
            raise RecipeError(f"{path}.{name}: required by {method.name}")
