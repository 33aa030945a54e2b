"""Data-flow-space (DFS) genome: a flat vector in [0, 1]^D <-> a layer path with scales.

After Akiba et al. (2024), section 3.2: the M layers of the source models are laid out in order
(every layer of the first model, then the second's, ...) and the layout is repeated r times,
giving T = M·r slots. Each slot has an indicator coordinate: slot t is on the path iff its value
is above 0.5 (I_t > 0 with I = x - 0.5). A scale W[i][j] multiplies the hidden state handed from
layer i to layer j; `scaling` picks its parameterization: `full` (one per ordered pair of source
layers, M×M as in the paper), `model_pair` (one per ordered pair of source models) or `none`.

The recipe it decodes to is a plain passthrough recipe of one-layer slices; each slice after the
first carries its scale as `input_scale` (an additive key; mergekit reads the recipe and ignores
it, the merge core folds it into `o_proj` / `down_proj`). Both directions are pure functions:
`decode(encode(r)) == r` for recipes in the space, and `encode(decode(x))` keeps x's path bits
and on-path scales (other coordinates return to their neutral values).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evomerge.errors import ConfigError, RecipeError
from evomerge.recipe import Recipe, SliceSpec, SourceSpec

SCALINGS = ("full", "model_pair", "none")
# Indicator values `encode` writes: inside the box, a quarter away from the 0.5 threshold, so
# CMA-ES (sigma0 ~0.15) flips a slot now and then instead of never or always.
ON, OFF = 0.75, 0.25
SCALE_DECIMALS = 6


@dataclass(frozen=True)
class DFSSpace:
    """The box: which source models, how often the layout repeats, how scales are shared.

    scale_range: W lives in [low, high] on a log scale (u=0 -> low, u=1 -> high), so 1 (no
    scaling) sits at the middle of the default [0.5, 2] and halving and doubling are equally near.
    max_path_length: keep at most this many used slots (the first ones); None: no limit.
    hidden_sizes: per source, when known; sources must agree (layers hand hidden states on).
    """

    models: tuple[str, ...]
    model_names: tuple[str, ...]
    num_layers: tuple[int, ...]  # per source model
    repeats: int = 3
    scaling: str = "full"
    scale_range: tuple[float, float] = (0.5, 2.0)
    max_path_length: int | None = None
    hidden_sizes: tuple[int, ...] = ()
    dtype: str | None = None

    def __post_init__(self) -> None:
        if not self.models or len(self.models) != len(self.model_names):
            raise ConfigError("models.sources: need at least one source model, each with a name")
        if len(set(self.model_names)) != len(self.model_names):
            raise ConfigError(f"models.sources: names must be unique, got {self.model_names}")
        if len(self.num_layers) != len(self.models) or min(self.num_layers) < 1:
            raise ConfigError(
                f"space: need a layer count >= 1 per source model, got {self.num_layers}"
            )
        if self.repeats < 1:
            raise ConfigError(f"space.repeats: must be >= 1, got {self.repeats}")
        if self.scaling not in SCALINGS:
            raise ConfigError(f"space.scaling: must be one of {SCALINGS}, got {self.scaling!r}")
        lo, hi = self.scale_range
        if not 0 < lo <= 1 <= hi or lo == hi:
            raise ConfigError(
                f"space.scale_range: must satisfy 0 < low <= 1 <= high and low < high, "
                f"got [{lo}, {hi}]"
            )
        if self.max_path_length is not None and self.max_path_length < 1:
            raise ConfigError(f"space.max_path_length: must be >= 1, got {self.max_path_length}")
        if len(set(self.hidden_sizes)) > 1:
            sizes = dict(zip(self.model_names, self.hidden_sizes, strict=False))
            raise ConfigError(
                f"models.sources: DFS hands hidden states between models, so every source needs "
                f"the same hidden_size, got {sizes}"
            )

    # --- layout -------------------------------------------------------------------------------

    @property
    def layout(self) -> tuple[tuple[int, int], ...]:
        """The M source layers in order, as (model index, layer index)."""
        return tuple((m, i) for m, n in enumerate(self.num_layers) for i in range(n))

    @property
    def num_slots(self) -> int:
        return len(self.layout) * self.repeats

    def layer_name(self, m: int, i: int) -> str:
        return f"{self.model_names[m]}.{i}"

    @property
    def slot_names(self) -> tuple[str, ...]:
        layout = self.layout
        width = len(str(self.num_slots - 1))
        return tuple(
            f"slot.{t:0{width}d}.{self.layer_name(*layout[t % len(layout)])}"
            for t in range(self.num_slots)
        )

    @property
    def scale_keys(self) -> tuple[tuple[int, int], ...]:
        """Index pairs (from, to) of the scale coordinates: source layers or source models."""
        n = len(self.layout) if self.scaling == "full" else len(self.models)
        return () if self.scaling == "none" else tuple((a, b) for a in range(n) for b in range(n))

    @property
    def scale_names(self) -> tuple[str, ...]:
        if self.scaling == "full":
            label = [self.layer_name(m, i) for m, i in self.layout]
        else:
            label = list(self.model_names)
        return tuple(f"scale.{label[a]}->{label[b]}" for a, b in self.scale_keys)

    @property
    def names(self) -> tuple[str, ...]:
        """Coordinate names (Optuna parameter names): the T slot indicators, then the scales."""
        return self.slot_names + self.scale_names

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def template_model(self) -> str:
        """Embeddings and architecture of the path model come from the first source."""
        return self.models[0]

    def fingerprint(self) -> str:
        """Identity of the space: a study may only resume with the same one."""
        limits = f"{self.scale_range}/{self.max_path_length}"
        text = "\n".join(["dfs", self.scaling, limits, *self.models, *self.names])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def x0(self) -> np.ndarray:
        """The first source model as it is: its layers in the first repetition, no scaling."""
        path = [t for t, (m, _) in enumerate(self.layout) if m == 0]
        return self.vector_of(path, {})

    def decode(self, x: Sequence[float] | np.ndarray) -> Recipe:
        return decode(self, x)

    def encode(self, recipe: Recipe) -> np.ndarray:
        return encode(self, recipe)

    # --- scale coordinates --------------------------------------------------------------------

    def scale_key(self, src: int, dst: int) -> tuple[int, int]:
        """The scale coordinate used between layout positions src and dst."""
        if self.scaling == "full":
            return (src, dst)
        return (self.layout[src][0], self.layout[dst][0])

    def from_unit(self, u: float) -> float:
        """Box coordinate -> scale, rounded to 6 decimals: readable recipes, stable round trips."""
        lo, hi = self.scale_range
        return round(float(lo * (hi / lo) ** u), SCALE_DECIMALS)

    def to_unit(self, scale: float) -> float:
        lo, hi = self.scale_range
        return min(1.0, max(0.0, math.log(scale / lo) / math.log(hi / lo)))

    def vector_of(self, slots: Sequence[int], scales: dict[tuple[int, int], float]) -> np.ndarray:
        on = set(slots)
        bits = [ON if t in on else OFF for t in range(self.num_slots)]
        neutral = self.to_unit(1.0)
        units = [self.to_unit(scales[k]) if k in scales else neutral for k in self.scale_keys]
        return np.array(bits + units, dtype=float)


def decode(space: DFSSpace, x: Sequence[float] | np.ndarray) -> Recipe:
    """Genome -> passthrough recipe. Coordinates outside [0, 1] are clipped to the box.

    Raises RecipeError when no slot is on (an empty path is no model).
    """
    v = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
    if v.shape != (space.dim,):
        raise ConfigError(f"genome: expected {space.dim} coordinates, got shape {v.shape}")
    t_count = space.num_slots
    used = [t for t in range(t_count) if v[t] > 0.5][: space.max_path_length]
    if not used:
        raise RecipeError("empty path: no slot indicator is above 0.5, so no layer runs")
    units = dict(zip(space.scale_keys, v[t_count:].tolist(), strict=True))
    layout, m_count = space.layout, len(space.layout)
    slices = []
    for p, t in enumerate(used):
        m, i = layout[t % m_count]
        scale = None
        if p > 0 and space.scaling != "none":
            scale = space.from_unit(units[space.scale_key(used[p - 1] % m_count, t % m_count)])
        source = SourceSpec(model=space.models[m], layer_range=(i, i + 1))
        slices.append(SliceSpec(sources=(source,), input_scale=scale))
    return Recipe(merge_method="passthrough", slices=tuple(slices), dtype=space.dtype)


def encode(space: DFSSpace, recipe: Recipe) -> np.ndarray:
    """Recipe -> genome; a recipe outside the space raises RecipeError saying where."""
    if recipe.merge_method != "passthrough" or not recipe.slices:
        raise RecipeError(
            f"merge_method: a data-flow path is a passthrough recipe with slices, "
            f"got {recipe.merge_method!r} with {len(recipe.slices)} slice(s)"
        )
    positions = [_layout_position(space, s, f"slices[{p}]") for p, s in enumerate(recipe.slices)]
    if space.max_path_length is not None and len(positions) > space.max_path_length:
        raise RecipeError(
            f"slices: the path has {len(positions)} layers, more than the space's "
            f"max_path_length {space.max_path_length}"
        )
    slots: list[int] = []
    m_count = len(space.layout)
    for p, pos in enumerate(positions):
        start = slots[-1] + 1 if slots else 0
        t = next((t for t in range(start, space.num_slots) if t % m_count == pos), None)
        if t is None:
            raise RecipeError(
                f"slices[{p}]: the path does not fit the layout repeated "
                f"{space.repeats} time(s); raise space.repeats"
            )
        slots.append(t)
    return space.vector_of(slots, _scales(space, recipe, positions))


def _layout_position(space: DFSSpace, s: SliceSpec, path: str) -> int:
    if len(s.sources) != 1 or s.parameters or s.sources[0].parameters:
        raise RecipeError(f"{path}: a path slice has one source and no parameters")
    src = s.sources[0]
    start, stop = src.layer_range
    if src.model not in space.models or stop - start != 1:
        raise RecipeError(
            f"{path}.sources[0]: expected one layer ([i, i+1]) of one of {list(space.models)}, "
            f"got {src.model!r} {list(src.layer_range)}"
        )
    m = space.models.index(src.model)
    if start >= space.num_layers[m]:
        raise RecipeError(
            f"{path}.sources[0].layer_range: {src.model!r} has {space.num_layers[m]} layers, "
            f"got {list(src.layer_range)}"
        )
    return space.layout.index((m, start))


def _scales(
    space: DFSSpace, recipe: Recipe, positions: Sequence[int]
) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    lo, hi = space.scale_range
    for p, s in enumerate(recipe.slices):
        path = f"slices[{p}].input_scale"
        if p == 0 or space.scaling == "none":
            if s.input_scale is not None:
                raise RecipeError(f"{path}: the space has no scale here, got {s.input_scale}")
            continue
        value = 1.0 if s.input_scale is None else s.input_scale
        if not lo - 1e-6 <= value <= hi + 1e-6:  # decode rounds to 6 decimals
            raise RecipeError(f"{path}: must lie in the space's scale_range {[lo, hi]}")
        key = space.scale_key(positions[p - 1], positions[p])
        if not math.isclose(out.setdefault(key, value), value, rel_tol=1e-12):
            raise RecipeError(
                f"{path}: {value} differs from {out[key]} used earlier for the same "
                f"{space.scaling} scale {key}"
            )
    return out
