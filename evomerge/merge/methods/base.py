"""What a merge method is: a pure tensor function, its declared parameters, its input contract."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from evomerge.errors import RecipeError, preview
from evomerge.merge.selection import Selection

Tensor = torch.Tensor
REQUIRED = object()


@dataclass(frozen=True)
class TaskVector:
    """tau = x - base for one input, in the compute dtype, with its L1 norm |tau|_1.

    The search merges the same sources hundreds of times, so it keeps these per source
    (SourceCache) instead of subtracting and summing again per candidate. Read-only.
    """

    delta: torch.Tensor
    l1: float

    @classmethod
    def of(cls, x: torch.Tensor, base: torch.Tensor) -> TaskVector:
        delta = x - base
        return cls(delta, float(delta.abs().sum()))


@dataclass(frozen=True)
class MergeArgs:
    """Resolved parameters for one output tensor.

    per_model[name][i] belongs to tensors[i]; `generators` (seeded methods only) gives one
    random source per non-base input, seeded from the random seed and the tensor name.
    `task_vectors`, when given, are tensors[i] - base, precomputed (methods on task vectors
    use them instead of `tensors`). `selection` breaks ties where a method selects by
    magnitude, rank or variance (merge/selection.py; by default as mergekit does).
    """

    per_model: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    shared: Mapping[str, Any] = field(default_factory=dict)
    generators: Sequence[Any] = ()
    task_vectors: Sequence[TaskVector] = ()
    selection: Selection = field(default_factory=Selection)


MethodFn = Callable[[Sequence[Tensor], Tensor | None, MergeArgs], Tensor]
# A rule across one input's resolved parameters (e.g. DELLA's density +/- epsilon): the
# violated rule as text, or None.
CrossCheck = Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class Param:
    """A declared parameter: its type, default (REQUIRED: none), and allowed closed range."""

    kind: type  # float, int or bool
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    optional: bool = False  # None is a valid value (passthrough's scale)

    def check(self, value: Any, path: str) -> None:
        if self.kind is bool:
            if not isinstance(value, bool):
                raise RecipeError(f"{path}: must be true or false, got {preview(value)}")
            return
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise RecipeError(f"{path}: must be an integer, got {preview(value)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{path}: must be a number, got {preview(value)}")
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise RecipeError(f"{path}: must be {self.range_text()}, got {preview(value)}")

    def range_text(self) -> str:
        if self.high is None:
            return f">= {self.low}"
        if self.low is None:
            return f"<= {self.high}"
        return f"in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class Method:
    """A registry entry: YAML name, function, declared parameters and input contract.

    Base model: `needs_base` methods require one; `optional_base` ones use it when the recipe
    gives one (task vectors from it) and work on the raw tensors otherwise; the others do not
    use it. Model counts are counted without the base.
    """

    name: str
    fn: MethodFn
    per_model: Mapping[str, Param]
    shared: Mapping[str, Param]
    needs_base: bool
    optional_base: bool = False
    min_models: int = 1
    max_models: int | None = None
    seeded: bool = False
    takes_task_vectors: bool = False  # uses MergeArgs.task_vectors when given
    converts_inputs: bool = False  # gets inputs narrower than float32 as they are (see run_job)
    reference: str = ""
    cross_check: CrossCheck | None = None
    # Output entry i depends on entry i of the inputs only (no norm, top-k, L1 rescale or
    # random draw over the whole tensor): merged in row blocks, it gives the same bits.
    entrywise: bool = False
    # The parameters a search may put in a genome, in coordinate order, each with the search
    # space's range it takes: "weight" (space.weight_range) or "density" (a keep share,
    # space.density_range). Per-model ones get a coordinate per layer group and model, shared
    # ones one per layer group. Empty: the method is not searchable.
    genome: Mapping[str, str] = field(default_factory=dict)

    @property
    def searchable(self) -> bool:
        return bool(self.genome)

    @property
    def parameters(self) -> Mapping[str, Param]:
        return {**self.per_model, **self.shared}

    @property
    def uses_base(self) -> bool:
        return self.needs_base or self.optional_base
