"""Recipe -> one job per output tensor, with inputs and resolved parameters; no weights read.

Layout rules follow mergekit: `models` is one segment over every layer (the base model joins the
inputs when the method needs it); `slices` are segments whose output layers are concatenated in
order. A parameter's gradient position t is offset / (length - 1) within its segment (1 for a
one-layer segment) and 0 for the global tensors (embeddings, final norm, head), which take their
inputs from the first segment (embeddings) or the last one (the rest). Parameter precedence:
the source's own parameters, then the slice's, then the recipe's; per-model filters match the
input tensor's name, global ones the output tensor's name.

Data-flow scales (a slice's `input_scale`, passthrough only) are folded into the weights: with
pre-norm (RMSNorm) layers, multiplying the residual stream by c before a layer equals dividing
the residual writers (`o_proj`, `down_proj`) of that layer and of every later one by c, up to
the norms' epsilon; the final norm removes the overall factor. So the output layer at position
p gets its writers' `scale` divided by C_p, the product of every `input_scale` up to p.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from evomerge.errors import MergeError, RecipeError, preview
from evomerge.merge.architecture import EMBED, LM_HEAD, ModelLayout, layer_tensor, writes_residual
from evomerge.merge.methods import REQUIRED, Method, Param, get_method
from evomerge.recipe import Condition, Gradient, Parameters, ParameterValue, Recipe, Scalar


@dataclass(frozen=True)
class TensorInput:
    model: str
    name: str  # the stored tensor name in that model


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: inputs (non-base first, the base last when `has_base`), parameters."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # promoted dtype of the inputs
    inputs: tuple[TensorInput, ...]
    has_base: bool
    per_model: Mapping[str, tuple[Any, ...]]  # one value per non-base input (all inputs if no base)
    shared: Mapping[str, Any]


@dataclass(frozen=True)
class MergePlan:
    recipe: Recipe
    method: Method
    jobs: tuple[TensorJob, ...]
    reference: str  # model whose config and global tensor layout the output copies
    layer_sources: tuple[tuple[str, int], ...]  # per output layer: (model, source layer)
    vocabulary: Any = None  # merge/vocabulary.py's Vocabulary when the recipe merges vocabularies


@dataclass(frozen=True)
class _Input:
    model: str
    layer_start: int
    parameters: Parameters
    path: str = ""  # recipe key path of the model entry, for messages


@dataclass(frozen=True)
class _Segment:
    path: str  # recipe key path, for messages
    inputs: tuple[_Input, ...]  # non-base first, base last when the method has one
    length: int
    parameters: Parameters  # slice-level
    input_scale: float = 1.0  # data-flow scale of the hidden state entering the segment
    has_base: bool = False  # the last input is the base model


def plan_merge(
    recipe: Recipe, layouts: Mapping[str, ModelLayout], vocabulary: Any = None
) -> MergePlan:
    """Every output tensor's job; raises on missing tensors, shape or range mismatches.

    With a `vocabulary` (merge/vocabulary.py), the embeddings and head have its rows, whatever
    each source's vocabulary size."""
    method = get_method(recipe.merge_method)
    segments = _segments(recipe, method, layouts)
    reference = recipe.base_model or segments[0].inputs[0].model
    ref_layout = layouts[reference]
    globals_ = ref_layout.global_tensors
    pre = [n for n in globals_ if "embed" in n]
    post = [n for n in globals_ if "embed" not in n]
    jobs = [_job(recipe, method, layouts, segments[0], n, n, None, 0.0) for n in pre]
    layer_sources: list[tuple[str, int]] = []
    residual_scale = 1.0  # C_p: product of the data-flow scales so far
    for seg in segments:
        first = seg.inputs[0]
        residual_scale *= seg.input_scale
        for offset in range(seg.length):
            t = offset / (seg.length - 1) if seg.length > 1 else 1.0
            out_layer = len(layer_sources)
            for suffix in layouts[first.model].layer_suffixes:
                out_name = layer_tensor(out_layer, suffix)
                job = _job(recipe, method, layouts, seg, out_name, suffix, offset, t)
                if residual_scale != 1.0 and writes_residual(suffix):
                    job = _fold_scale(job, residual_scale)
                jobs.append(job)
            layer_sources.append((first.model, first.layer_start + offset))
    jobs += [_job(recipe, method, layouts, segments[-1], n, n, None, 0.0) for n in post]
    if vocabulary is not None:
        jobs = [_vocabulary_rows(job, vocabulary.rows) for job in jobs]
    return MergePlan(recipe, method, tuple(jobs), reference, tuple(layer_sources), vocabulary)


def _vocabulary_rows(job: TensorJob, rows: int) -> TensorJob:
    """The embeddings and head take the merged vocabulary's row count."""
    if job.name not in (EMBED, LM_HEAD):
        return job
    return replace(job, shape=(rows, *job.shape[1:]))


def _segments(recipe: Recipe, method: Method, layouts: Mapping[str, ModelLayout]) -> list[_Segment]:
    if recipe.models:
        base = recipe.base_model if method.uses_base else None
        inputs = [
            _Input(m.model, 0, m.parameters, f"models[{i}]")
            for i, m in enumerate(recipe.models)
            if m.model != base
        ]
        if base is not None:
            inputs.append(_Input(base, 0, {}))
        counts = {layouts[i.model].num_layers for i in inputs}
        if len(counts) > 1:
            detail = {i.model: layouts[i.model].num_layers for i in inputs}
            raise MergeError(
                f"models: every model needs the same number of layers, got {detail}; "
                "use `slices` with layer_range to combine different depths"
            )
        return [_Segment("models", tuple(inputs), counts.pop(), {}, has_base=base is not None)]
    segments = []
    for i, s in enumerate(recipe.slices):
        base = (s.base_model or recipe.base_model) if method.uses_base else None
        for j, src in enumerate(s.sources):
            _check_range(src.layer_range, layouts[src.model], f"slices[{i}].sources[{j}]")
        inputs = [
            _Input(x.model, x.layer_range[0], x.parameters, f"slices[{i}].sources[{j}]")
            for j, x in enumerate(s.sources)
            if x.model != base
        ]
        bases = [_Input(x.model, x.layer_range[0], {}) for x in s.sources if x.model == base]
        inputs += bases[:1]
        length = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
        scale = 1.0 if s.input_scale is None else s.input_scale
        segment = _Segment(f"slices[{i}]", tuple(inputs), length, s.parameters, scale, bool(bases))
        segments.append(segment)
    return segments


def _fold_scale(job: TensorJob, residual_scale: float) -> TensorJob:
    """Divide a residual writer's passthrough `scale` by the data-flow product C_p."""
    scales = tuple(
        (1.0 if v is None else float(v)) / residual_scale for v in job.per_model["scale"]
    )
    return replace(job, per_model={**job.per_model, "scale": scales})


def _check_range(layer_range: tuple[int, int], layout: ModelLayout, path: str) -> None:
    if layer_range[1] > layout.num_layers:
        raise RecipeError(
            f"{path}.layer_range: {list(layer_range)} is out of bounds; model "
            f"{preview(layout.ref)} has {layout.num_layers} layers (valid: 0 <= start < end <= "
            f"{layout.num_layers})"
        )


def _job(
    recipe: Recipe,
    method: Method,
    layouts: Mapping[str, ModelLayout],
    seg: _Segment,
    out_name: str,
    suffix: str,
    offset: int | None,
    t: float,
) -> TensorJob:
    inputs = _job_inputs(layouts, seg, out_name, suffix, offset)
    infos = [layouts[i.model].tensors[i.name] for i in inputs]
    _check_shapes(recipe, out_name, inputs, infos)
    dtype = infos[0].dtype
    for info in infos[1:]:
        dtype = torch.promote_types(dtype, info.dtype)
    per_model, shared = _job_parameters(recipe, method, seg, inputs, out_name, t)
    return TensorJob(
        out_name, infos[0].shape, dtype, tuple(inputs), seg.has_base, per_model, shared
    )


def _job_inputs(
    layouts: Mapping[str, ModelLayout],
    seg: _Segment,
    out_name: str,
    suffix: str,
    offset: int | None,
) -> list[TensorInput]:
    """The stored tensor of each of the segment's inputs that `out_name` is merged from."""
    inputs = []
    for item in seg.inputs:
        wanted = suffix if offset is None else layer_tensor(item.layer_start + offset, suffix)
        stored = layouts[item.model].source_name(wanted)
        if stored is None:
            raise MergeError(
                f"model {preview(item.model)} has no tensor {wanted} (needed for {out_name})"
            )
        inputs.append(TensorInput(item.model, stored))
    return inputs


def _check_shapes(
    recipe: Recipe, out_name: str, inputs: Sequence[TensorInput], infos: Sequence[Any]
) -> None:
    # merged vocabularies: rows are aligned by token later (merge/vocabulary.py); widths must agree
    aligned = out_name in (EMBED, LM_HEAD) and (
        recipe.tokenizer is not None or recipe.tokenizer_source is not None
    )
    skip = 1 if aligned else 0
    for inp, info in zip(inputs[1:], infos[1:], strict=True):
        if info.shape[skip:] != infos[0].shape[skip:]:
            raise MergeError(
                f"shape mismatch for {out_name}: {preview(inputs[0].model)} has {inputs[0].name} "
                f"{list(infos[0].shape)}, {preview(inp.model)} has {inp.name} {list(info.shape)}"
            )


def _job_parameters(
    recipe: Recipe,
    method: Method,
    seg: _Segment,
    inputs: Sequence[TensorInput],
    out_name: str,
    t: float,
) -> tuple[dict[str, tuple[Any, ...]], dict[str, Any]]:
    """(per-model values, shared values) of the method's parameters for this tensor, the
    method's cross-check applied to each input's."""
    weighted = seg.inputs[:-1] if seg.has_base else seg.inputs
    per_model = {
        name: tuple(
            _resolve(
                name,
                param,
                [x.parameters, seg.parameters, recipe.parameters],
                inp.name,
                t,
                inp.model,
            )
            for x, inp in zip(weighted, inputs, strict=False)
        )
        for name, param in method.per_model.items()
    }
    shared = {
        name: _resolve(name, param, [seg.parameters, recipe.parameters], out_name, t, None)
        for name, param in method.shared.items()
    }
    if method.cross_check is not None:
        for i, (item, inp) in enumerate(zip(weighted, inputs, strict=False)):
            broken = method.cross_check({k: v[i] for k, v in per_model.items()})
            if broken:
                raise RecipeError(
                    f"{item.path}.parameters: {broken} (model {preview(item.model)}, tensor {inp.name})"
                )
    return per_model, shared


def _resolve(
    name: str,
    param: Param,
    scopes: Sequence[Parameters],
    tensor: str,
    t: float,
    model: str | None,
) -> Any:
    for scope in scopes:
        if name in scope:
            value = resolve_value(scope[name], tensor, t)
            if value is not None:
                return value
    if param.default is REQUIRED:
        where = f"{tensor} of model {preview(model)}" if model else tensor
        raise RecipeError(
            f"parameters.{name}: no value applies to {where} (no filter matched); "
            "add a condition without a filter as the fallback"
        )
    return param.default


# --- resolution ------------------------------------------------------------------------------


def resolve_value(value: ParameterValue, tensor_name: str, t: float) -> Scalar | None:
    """The scalar a parameter takes for one tensor at relative layer position t in [0, 1].

    Conditions: the first whose filter is missing, `*`, or a substring of `tensor_name` wins;
    None when none matches (the caller falls back to the next scope). Gradients: numeric lists
    interpolate linearly between neighbours at t * (len - 1); other lists pick the lower one.
    """
    if isinstance(value, tuple) and value and isinstance(value[0], Condition):
        for cond in value:
            assert isinstance(cond, Condition)  # a parsed tuple is all conditions or none
            if cond.filter is None or cond.filter == "*" or cond.filter in tensor_name:
                return resolve_value(cond.value, tensor_name, t)
        return None
    if isinstance(value, tuple):
        return _interpolate(value, t)  # type: ignore[arg-type]
    assert not isinstance(value, Condition)
    return value


def _interpolate(values: Gradient, t: float) -> Scalar:
    position = t * (len(values) - 1)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return values[int(position)]
    lo = int(position)
    hi = min(len(values) - 1, lo + 1)
    frac = position - lo
    return (1 - frac) * float(values[lo]) + frac * float(values[hi])
