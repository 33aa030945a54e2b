"""Parameter-space (PS) genome: a flat vector in [0, 1]^D <-> a per-layer-group merge recipe.

After Akiba et al. (2024), section 3.1: per layer group and per source model, a mixing weight
and (for TIES / DARE) a density. Embeddings and the output head are groups of their own.
The recipe it decodes to is plain mergekit: per-model parameters given as `{filter, value}`
lists, one entry per tensor-name prefix (`model.embed_tokens`, `model.layers.<i>.`, ...).
Both directions are pure functions; `encode(space, decode(space, x)) == x` for x in the box.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evomerge.errors import ConfigError, RecipeError
from evomerge.merge.architecture import EMBED_FILTERS, HEAD_FILTERS, layer_prefix
from evomerge.merge.methods import METHODS, REQUIRED, Method, get_method
from evomerge.merge.selection import search_tie_rule
from evomerge.recipe import Condition, ModelSpec, Recipe

# The genome's parameters, their ranges, and whether a base is needed come from the method
# registry (`Method.genome`, `Method.needs_base`). Per-model parameters get a coordinate per
# layer group and model; global ones (sce's select_topk) one per layer group, written as
# top-level `{filter, value}` conditions. The method's other parameters (DELLA's epsilon,
# lambda, ...) are fixed for the search in `space.parameters`.
SEARCHABLE = tuple(sorted(name for name, m in METHODS.items() if m.searchable))


@dataclass(frozen=True)
class Group:
    name: str
    filters: tuple[str, ...]  # tensor-name substrings this group's values apply to


@dataclass(frozen=True)
class PSSpace:
    """The box: which models, how layers are grouped, and the range of each parameter.

    weight_range: weights may exceed 1 (the toy's best per-layer weights sat near 2).
    density_range: DARE/TIES keep share; below ~0.1 too little of a task vector survives.
    x0: the uniform merge (every group at `x0_weight` / `x0_density`), CMA-ES's start.
    """

    base_model: str | None
    models: tuple[str, ...]
    model_names: tuple[str, ...]
    num_layers: int
    method: str = "dare_ties"
    layers_per_group: int = 1
    weight_range: tuple[float, float] = (0.0, 2.0)
    density_range: tuple[float, float] = (0.1, 1.0)
    x0_weight: float = 1.0
    x0_density: float = 0.5
    parameters: Mapping[str, Any] = field(default_factory=dict)  # global, e.g. normalize
    dtype: str | None = None
    random_seed: int = 0
    tokenizer_source: str | None = None  # set when the sources' vocabularies differ

    def __post_init__(self) -> None:
        if self.method not in SEARCHABLE:
            raise ConfigError(
                f"space.method: {self.method!r} is not searchable in PS space; "
                f"choose one of {list(SEARCHABLE)}"
            )
        if self.registry.needs_base and not self.base_model:
            raise ConfigError(f"models.base_model: method {self.method!r} needs a base model")
        if not self.models or len(self.models) != len(self.model_names):
            raise ConfigError("models.sources: need at least one source model, each with a name")
        if len(set(self.model_names)) != len(self.model_names):
            raise ConfigError(f"models.sources: names must be unique, got {self.model_names}")
        if self.num_layers < 1:
            raise ConfigError(f"space: num_layers must be >= 1, got {self.num_layers}")
        if not 1 <= self.layers_per_group <= self.num_layers:
            raise ConfigError(
                f"space.layers_per_group: must be in [1, {self.num_layers}], "
                f"got {self.layers_per_group}"
            )
        for key in ("weight_range", "density_range"):
            lo, hi = getattr(self, key)
            if not lo < hi:
                raise ConfigError(f"space.{key}: must satisfy low < high, got [{lo}, {hi}]")
        lo, hi = self.density_range
        if lo < 0 or hi > 1:  # keep shares
            raise ConfigError(f"space.density_range: must lie in [0, 1], got [{lo}, {hi}]")
        for key, rng in (("x0_weight", self.weight_range), ("x0_density", self.density_range)):
            if not rng[0] <= getattr(self, key) <= rng[1]:
                raise ConfigError(f"space.{key}: must lie in {list(rng)}, got {getattr(self, key)}")
        declared = self.registry.parameters
        for name in self.parameters:
            if name not in declared:
                raise ConfigError(
                    f"space.parameters.{name}: not a parameter of {self.method} (valid: "
                    f"{', '.join(sorted(declared))}); remove it (~space.parameters.{name})"
                )
        for name in self.group_parameter_names:
            if name in self.parameters:
                raise ConfigError(
                    f"space.parameters.{name}: searched per layer group for {self.method}; "
                    f"remove it (its range is space.{self.registry.genome[name]}_range)"
                )
        _check_cross_rule(self.registry, self.parameters, self.density_range)

    @property
    def registry(self) -> Method:
        """The method's registry entry: its genome parameters, ranges and base model."""
        return get_method(self.method, path="space.method")

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p for p in self.registry.genome if p in self.registry.per_model)

    @property
    def group_parameter_names(self) -> tuple[str, ...]:
        return tuple(p for p in self.registry.genome if p not in self.registry.per_model)

    @property
    def groups(self) -> tuple[Group, ...]:
        k = self.layers_per_group
        layer_groups = []
        for start in range(0, self.num_layers, k):
            stop = min(start + k, self.num_layers)
            name = f"layers.{start}" if stop - start == 1 else f"layers.{start}-{stop - 1}"
            layer_groups.append(Group(name, tuple(layer_prefix(i) for i in range(start, stop))))
        return (Group("embed", EMBED_FILTERS), *layer_groups, Group("head", HEAD_FILTERS))

    @property
    def names(self) -> tuple[str, ...]:
        """Coordinate names (the Optuna parameter names): `<group>.<model>.<parameter>`, then
        `<group>.<parameter>` for per-group global parameters."""
        per_model = tuple(
            f"{g.name}.{m}.{p}"
            for g in self.groups
            for m in self.model_names
            for p in self.parameter_names
        )
        return per_model + tuple(
            f"{g.name}.{p}" for g in self.groups for p in self.group_parameter_names
        )

    @property
    def coordinates(self) -> tuple[tuple[str, str | None, str], ...]:
        """(name, source model, parameter) of each coordinate in `names` order; the model is
        None for a per-group global parameter."""
        per_model = tuple(
            (f"{g.name}.{m}.{p}", m, p)
            for g in self.groups
            for m in self.model_names
            for p in self.parameter_names
        )
        return per_model + tuple(
            (f"{g.name}.{p}", None, p) for g in self.groups for p in self.group_parameter_names
        )

    @property
    def dim(self) -> int:
        return len(self.names)

    def range_of(self, parameter: str) -> tuple[float, float]:
        """The space's range for a genome parameter (the registry says which one it takes)."""
        ranges = {"weight": self.weight_range, "density": self.density_range}
        return ranges[self.registry.genome[parameter]]

    @property
    def template_model(self) -> str:
        """The model whose architecture the merged candidates share (the live model's)."""
        return self.base_model or self.models[0]

    def fingerprint(self) -> str:
        """Identity of the space: a study may only resume with the same one."""
        text = "\n".join(["ps", self.method, *self.models, *self.names])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def decode(self, x: Sequence[float] | np.ndarray) -> Recipe:
        return decode(self, x)

    def encode(self, recipe: Recipe) -> np.ndarray:
        return encode(self, recipe)

    def x0(self) -> np.ndarray:
        """The uniform merge as a point of the box."""
        start = {"weight": self.x0_weight}  # densities and keep shares: x0_density
        return np.array(
            [
                _to_unit(
                    start.get(n.rsplit(".", 1)[1], self.x0_density),
                    self.range_of(n.rsplit(".", 1)[1]),
                )
                for n in self.names
            ]
        )


def split_coordinate(name: str) -> tuple[str, str, str] | None:
    """(group, model, parameter) of a coordinate name read back from a study, where no space
    is at hand: `<group>.<model>.<parameter>` (the group may hold dots, `layers.0`); None for
    a name with fewer parts. Per-group names (`<group>.<parameter>`) read as (group head,
    group index, parameter): callers keep the parameters they know."""
    parts = name.rsplit(".", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def decode(space: PSSpace, x: Sequence[float] | np.ndarray) -> Recipe:
    """Genome -> recipe. Coordinates outside [0, 1] are clipped to the box."""
    x = np.asarray(x, dtype=float)
    if x.shape != (space.dim,):
        raise ConfigError(f"genome: expected {space.dim} coordinates, got shape {x.shape}")
    values = dict(zip(space.names, np.clip(x, 0.0, 1.0).tolist(), strict=True))
    models = []
    for model, mname in zip(space.models, space.model_names, strict=True):
        params: dict[str, tuple[Condition, ...]] = {}
        for p in space.parameter_names:
            lo, hi = space.range_of(p)
            params[p] = tuple(
                Condition(value=_from_unit(values[f"{g.name}.{mname}.{p}"], (lo, hi)), filter=f)
                for g in space.groups
                for f in g.filters
            )
        models.append(ModelSpec(model=model, parameters=params))
    shared: dict[str, Any] = dict(space.parameters)
    for p in space.group_parameter_names:
        shared[p] = tuple(
            Condition(value=_from_unit(values[f"{g.name}.{p}"], space.range_of(p)), filter=f)
            for g in space.groups
            for f in g.filters
        )
    return Recipe(
        merge_method=space.method,
        base_model=space.base_model if space.registry.needs_base else None,
        models=tuple(models),
        parameters=shared,
        dtype=space.dtype,
        random_seed=space.random_seed,
        # counter-based drops: computed where the merge runs, nothing stored (merge/drops.py)
        drop_scheme="counter" if get_method(space.method).seeded else None,
        # ties among equal magnitudes broken by the fast rule: the exported winner names it, so
        # it merges to the model that was evaluated (merge/selection.py)
        tie_rule=search_tie_rule(space.method),
        tokenizer_source=space.tokenizer_source,
    )


def encode(space: PSSpace, recipe: Recipe) -> np.ndarray:
    """Recipe -> genome; a recipe outside the space raises RecipeError saying where."""
    if recipe.merge_method != space.method:
        raise RecipeError(
            f"merge_method: the space searches {space.method!r}, got {recipe.merge_method!r}"
        )
    got = tuple(m.model for m in recipe.models)
    if got != space.models:
        raise RecipeError(f"models: the space's sources are {list(space.models)}, got {list(got)}")
    out = []
    for g in space.groups:
        for i, spec in enumerate(recipe.models):
            for p in space.parameter_names:
                v = _group_value(spec.parameters, p, g, f"models[{i}].parameters.{p}")
                out.append(_to_unit(v, space.range_of(p)))
    for g in space.groups:
        for p in space.group_parameter_names:
            v = _group_value(recipe.parameters, p, g, f"parameters.{p}")
            out.append(_to_unit(v, space.range_of(p)))
    return np.array(out)


def _group_value(parameters: Mapping[str, Any], parameter: str, group: Group, path: str) -> float:
    setting = parameters.get(parameter)
    if not isinstance(setting, tuple) or not all(isinstance(c, Condition) for c in setting):
        raise RecipeError(f"{path}: expected a list of {{filter, value}} entries")
    by_filter = {c.filter: c.value for c in setting if isinstance(c, Condition)}
    found = {by_filter.get(f) for f in group.filters}
    if len(found) != 1 or None in found:
        raise RecipeError(
            f"{path}: group {group.name!r} needs one shared value for filters "
            f"{list(group.filters)}, got {sorted(map(str, found))}"
        )
    value = found.pop()
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RecipeError(f"{path}: value for group {group.name!r} must be a number, got {value!r}")
    return float(value)


def _check_cross_rule(
    method: Method, fixed: Mapping[str, Any], density_range: tuple[float, float]
) -> None:
    """The method's rule across one input's values (DELLA: density +/- epsilon inside (0, 1))
    must hold over the whole density range, with the fixed parameters at their values."""
    if method.cross_check is None or "density" not in method.genome:
        return
    defaults = {n: p.default for n, p in method.parameters.items() if p.default is not REQUIRED}
    values = defaults | dict(fixed)
    lo, hi = density_range
    # the range's ends, moved inside (0, 1) where they sit on it: the rule holds at the ends
    # of (0, 1) themselves (nothing pruned) but not next to them
    for density in (max(lo, math.ulp(0.0)), min(hi, math.nextafter(1.0, 0.0))):
        problem = method.cross_check(values | {"density": density})
        if problem is not None:
            raise ConfigError(
                f"space.density_range: for {method.name}, {problem} "
                f"(an end of the range [{lo}, {hi}])"
            )


def _from_unit(u: float, rng: tuple[float, float]) -> float:
    return rng[0] + u * (rng[1] - rng[0])


def _to_unit(v: float, rng: tuple[float, float]) -> float:
    return (v - rng[0]) / (rng[1] - rng[0])
