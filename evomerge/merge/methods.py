"""Merge methods: pure tensor functions and the one registry that names them.

Each method receives the input tensors of one output tensor, already on the compute device in
float32 (float64 stays float64), and returns the merged tensor. Methods with a base model get the
non-base inputs in `tensors` and the base in `base`; the others get every input in `tensors`.
Definitions follow mergekit 0.1.5 (same YAML names, parameters and defaults); the deliberate
differences are listed in the README ("Merging").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from evomerge.errors import RecipeError
from evomerge.merge import sparsify

if TYPE_CHECKING:
    from evomerge.recipe import Recipe

Tensor = torch.Tensor
REQUIRED = object()


@dataclass(frozen=True)
class MergeArgs:
    """Resolved parameters for one output tensor.

    per_model[name][i] belongs to tensors[i]; `generators` (seeded methods only) gives one
    torch.Generator per non-base input, seeded from the random seed and the tensor name.
    """

    per_model: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    shared: Mapping[str, Any] = field(default_factory=dict)
    generators: Sequence[torch.Generator] = ()


MethodFn = Callable[[Sequence[Tensor], Tensor | None, MergeArgs], Tensor]


@dataclass(frozen=True)
class Param:
    """A declared parameter: its type, default (REQUIRED: none), and allowed closed range."""

    kind: type  # float or bool
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    optional: bool = False  # None is a valid value (passthrough's scale)

    def check(self, value: Any, path: str) -> None:
        if self.kind is bool:
            if not isinstance(value, bool):
                raise RecipeError(f"{path}: must be true or false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{path}: must be a number, got {value!r}")
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise RecipeError(f"{path}: must be in [{self.low}, {self.high}], got {value!r}")


@dataclass(frozen=True)
class Method:
    """A registry entry: YAML name, function, declared parameters and input contract."""

    name: str
    fn: MethodFn
    per_model: Mapping[str, Param]
    shared: Mapping[str, Param]
    needs_base: bool
    min_models: int = 1  # counted without the base
    max_models: int | None = None
    seeded: bool = False
    reference: str = ""

    @property
    def parameters(self) -> Mapping[str, Param]:
        return {**self.per_model, **self.shared}

    def check_recipe(self, recipe: Recipe) -> None:
        """Parameter names, types and ranges everywhere; base model and input counts."""
        from evomerge.merge.recipe_checks import check_recipe_for_method

        check_recipe_for_method(self, recipe)


# --- methods -------------------------------------------------------------------------------


def linear(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Weighted average, sum(w_i x_i) / sum(w_i) with `normalize` (arXiv:2203.05482)."""
    weights = torch.tensor(args.per_model["weight"], dtype=tensors[0].dtype)
    out = torch.zeros_like(tensors[0])
    for x, w in zip(tensors, weights.to(out.device), strict=True):
        out.addcmul_(x, w)
    total = float(weights.sum())
    # mergekit divides by a zero sum too (inf/NaN out); we leave the sum unnormalized instead.
    if args.shared["normalize"] and abs(total) >= 1e-8:
        out.div_(total)
    return out


def _task_arithmetic(
    tensors: Sequence[Tensor],
    base: Tensor | None,
    args: MergeArgs,
    *,
    sparsifier: str | None,
    consensus: bool,
) -> Tensor:
    """Generalized task arithmetic: sparsify each task vector, weight, elect signs, sum.

    Task vectors tau_i = x_i - base (arXiv:2212.04089); TIES trims by magnitude and keeps only
    entries agreeing with the sign of the weighted sum (arXiv:2306.01708, eq. of step 2-3);
    DARE drops at random and rescales (arXiv:2311.03099); breadcrumbs drops the smallest and
    the largest-magnitude outliers (arXiv:2312.06795).
    """
    if base is None:
        raise ValueError("task arithmetic needs a base tensor")  # the planner guarantees one
    rescale = bool(args.shared["rescale"])
    deltas = base.new_empty((len(tensors), *base.shape))  # (N, *shape), filled row by row
    for i, x in enumerate(tensors):
        torch.sub(x, base, out=deltas[i])
        if sparsifier is not None:
            sparsify.sparsify_(
                sparsifier,
                deltas[i],
                density=float(args.per_model["density"][i]),
                gamma=float(args.per_model.get("gamma", [0.0] * len(tensors))[i]),
                rescale=rescale,
                generator=args.generators[i] if args.generators else None,
            )
    weights = torch.tensor(args.per_model["weight"], dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape(-1, *([1] * base.dim()))  # (N, 1, ..., 1)
    deltas.mul_(weights)
    if consensus:
        positive = deltas.sum(dim=0) >= 0  # elected sign; a tie counts as positive
        agree = torch.where(positive, deltas > 0, deltas < 0)  # (N, *shape); zeros never agree
        mixed = deltas.masked_fill_(~agree, 0.0).sum(dim=0)
        divisor = torch.zeros_like(mixed)  # sum of the agreeing weights, one row at a time
        for w, row in zip(weights.reshape(-1).tolist(), agree, strict=True):
            divisor.add_(row, alpha=w)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if args.shared["normalize"]:
        mixed /= divisor
    if args.shared["lambda"] != 1:
        mixed *= args.shared["lambda"]
    return base + mixed


def task_arithmetic(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier=None, consensus=False)


def ties(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="magnitude", consensus=True)


def dare_ties(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="random", consensus=True)


def dare_linear(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="random", consensus=False)


def breadcrumbs(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="outliers", consensus=False)


def breadcrumbs_ties(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="outliers", consensus=True)


def slerp(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Spherical interpolation from the base (t=0) to the other model (t=1), whole tensor.

    Angles come from the normalized flattened tensors; nearly collinear pairs fall back to
    linear interpolation, as in mergekit.
    """
    if base is None:
        raise ValueError("slerp needs a base tensor")
    v0, v1 = base, tensors[0]
    t = float(args.shared["t"])
    a, b = v0.reshape(-1), v1.reshape(-1)
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > 1e-8, norm_a, 1.0)
    norm_b = torch.where(norm_b > 1e-8, norm_b, 1.0)
    dot = float(((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1))
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
    sin_theta = torch.sin(theta)
    coef_0 = float(torch.sin((1 - t) * theta) / sin_theta)
    coef_1 = float(torch.sin(t * theta) / sin_theta)
    return coef_0 * v0 + coef_1 * v1


def passthrough(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """The single input, times its `scale` when one is given (data-flow merges)."""
    scale = args.per_model["scale"][0]
    return tensors[0] if scale is None else tensors[0] * scale


def model_stock(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Model Stock (arXiv:2403.19522, eq. 2): t = N cos / (1 + (N-1) cos), w = t avg + (1-t) w0."""
    if base is None:
        raise ValueError("model_stock needs a base tensor")
    shape = base.shape
    if args.shared["filter_wise"]:  # one angle per output row
        w0 = base if base.dim() > 1 else base.unsqueeze(0)
        ws = [x if x.dim() > 1 else x.unsqueeze(0) for x in tensors]
    else:
        w0, ws = base.reshape(-1), [x.reshape(-1) for x in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, u in enumerate(offsets):
        for v in offsets[i + 1 :]:
            norms = torch.linalg.vector_norm(u, dim=-1) * torch.linalg.vector_norm(v, dim=-1)
            cosines.append(((u * v).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    # At the singularity (opposed updates) keep the base rather than amplify them.
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))
    average = torch.stack(ws).sum(dim=0) / n
    return (t * average + (1 - t) * w0).reshape(shape)


# --- registry ------------------------------------------------------------------------------

_WEIGHT = Param(float)
_DENSITY = Param(float, default=1.0, low=0.0, high=1.0)
_GAMMA = Param(float, default=0.01, low=0.0, high=1.0)


def _ta_shared(*, normalize: bool, rescale: bool) -> dict[str, Param]:
    return {
        "int8_mask": Param(bool, default=False),  # memory option in mergekit; no effect here
        "normalize": Param(bool, default=normalize),
        "rescale": Param(bool, default=rescale),
        "lambda": Param(float, default=1.0),
    }


def _ta(name: str, fn: MethodFn, *, normalize: bool, rescale: bool, ref: str, **kw: Any) -> Method:
    per_model = {"weight": _WEIGHT, "density": _DENSITY}
    if name.startswith("breadcrumbs"):
        per_model["gamma"] = _GAMMA
    shared = _ta_shared(normalize=normalize, rescale=rescale)
    return Method(name, fn, per_model, shared, needs_base=True, reference=ref, **kw)


METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (
        Method(
            "linear",
            linear,
            per_model={"weight": _WEIGHT},
            shared={"normalize": Param(bool, default=True)},
            needs_base=False,
            reference="arXiv:2203.05482",
        ),
        _ta(
            "task_arithmetic",
            task_arithmetic,
            normalize=False,
            rescale=False,
            ref="arXiv:2212.04089",
        ),
        _ta("ties", ties, normalize=True, rescale=False, ref="arXiv:2306.01708"),
        _ta(
            "dare_ties",
            dare_ties,
            normalize=False,
            rescale=True,
            ref="arXiv:2311.03099",
            seeded=True,
        ),
        _ta(
            "dare_linear",
            dare_linear,
            normalize=False,
            rescale=True,
            ref="arXiv:2311.03099",
            seeded=True,
        ),
        _ta("breadcrumbs", breadcrumbs, normalize=False, rescale=False, ref="arXiv:2312.06795"),
        _ta(
            "breadcrumbs_ties",
            breadcrumbs_ties,
            normalize=False,
            rescale=False,
            ref="arXiv:2312.06795",
        ),
        Method(
            "slerp",
            slerp,
            per_model={},
            shared={"t": Param(float)},
            needs_base=True,
            max_models=1,
        ),
        Method(
            "passthrough",
            passthrough,
            per_model={"scale": Param(float, default=None, optional=True)},
            shared={},
            needs_base=False,
            max_models=1,
        ),
        Method(
            "model_stock",
            model_stock,
            per_model={},
            shared={"filter_wise": Param(bool, default=False)},
            needs_base=True,
            min_models=2,
            reference="arXiv:2403.19522",
        ),
    )
}


def get_method(name: str, *, path: str = "merge_method") -> Method:
    """The registry entry for `name`; an unknown name lists the valid ones."""
    if name not in METHODS:
        valid = ", ".join(sorted(METHODS))
        raise RecipeError(f"{path}: unknown merge method {name!r}; valid methods: {valid}")
    return METHODS[name]
