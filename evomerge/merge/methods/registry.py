"""The one registry: every merge method by its YAML name, with its declared parameters.

Names, parameters, defaults and input contracts are mergekit 0.1.5's. Ranges are ours: a value
outside them is a recipe error (mergekit would merge nonsense, or fail mid-merge).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evomerge.errors import RecipeError, preview
from evomerge.merge.methods import interpolation as ip
from evomerge.merge.methods import task_vectors as tv
from evomerge.merge.methods.base import Method, MethodFn, Param

_WEIGHT = Param(float)
_DENSITY = Param(float, default=1.0, low=0.0, high=1.0)
_GAMMA = Param(float, default=0.01, low=0.0, high=1.0)
_EPSILON = Param(float, default=0.15, low=0.0, high=0.5)  # DELLA's keep-probability spread
_INT8_MASK = Param(bool, default=False)  # a memory option in mergekit; no effect on numbers


def _ta_shared(*, normalize: bool, rescale: bool) -> dict[str, Param]:
    return {
        "int8_mask": _INT8_MASK,
        "normalize": Param(bool, default=normalize),
        "rescale": Param(bool, default=rescale),
        "lambda": Param(float, default=1.0),
    }


def _della_rule(values: Mapping[str, Any]) -> str | None:
    """mergekit's MagPrune needs keep probabilities inside (0, 1) whenever it prunes."""
    density, epsilon = float(values["density"]), float(values["epsilon"])
    if 0 < density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
        return (
            "density - epsilon > 0 and density + epsilon < 1 must hold when 0 < density < 1, "
            f"got density {density:g}, epsilon {epsilon:g}"
        )
    return None


_WEIGHT_AND_DENSITY = {"weight": "weight", "density": "density"}  # genome: parameter -> range


def _ta(name: str, fn: MethodFn, *, normalize: bool, rescale: bool, ref: str, **kw: Any) -> Method:
    per_model = {"weight": _WEIGHT, "density": _DENSITY}
    if name.startswith("breadcrumbs"):
        per_model["gamma"] = _GAMMA
    if name.startswith("della"):
        per_model["epsilon"] = _EPSILON
        kw["cross_check"] = _della_rule
    shared = _ta_shared(normalize=normalize, rescale=rescale)
    return Method(
        name, fn, per_model, shared, needs_base=True, takes_task_vectors=True, reference=ref, **kw
    )


_DARE = "arXiv:2311.03099"
_DELLA = "arXiv:2406.11617"
_BREADCRUMBS = "arXiv:2312.06795"
_RAM = "arXiv:2601.13572"
_NONNEGATIVE = Param(float, default=1e-5, low=0.0)
# karcher's fixed-point steps, at most: each step is a pass over every input tensor, and the
# iteration converges in a few steps (mergekit's default is 10); a recipe asking for 1e9
# steps with `tol: 0` would run for days, so past ten times the default it is a recipe error.
MAX_KARCHER_ITER = 100

METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (
        Method(
            "linear",
            ip.linear,
            per_model={"weight": _WEIGHT},
            shared={"normalize": Param(bool, default=True)},
            needs_base=False,
            reference="arXiv:2203.05482",
            entrywise=True,
            genome={"weight": "weight"},
        ),
        _ta(
            "task_arithmetic",
            tv.task_arithmetic,
            normalize=False,
            rescale=False,
            ref="arXiv:2212.04089",
            entrywise=True,
            genome={"weight": "weight"},
        ),
        _ta(
            "ties",
            tv.ties,
            normalize=True,
            rescale=False,
            ref="arXiv:2306.01708",
            genome=_WEIGHT_AND_DENSITY,
        ),
        _ta(
            "dare_ties",
            tv.dare_ties,
            normalize=False,
            rescale=True,
            ref=_DARE,
            seeded=True,
            genome=_WEIGHT_AND_DENSITY,
        ),
        _ta(
            "dare_linear",
            tv.dare_linear,
            normalize=False,
            rescale=True,
            ref=_DARE,
            seeded=True,
            genome=_WEIGHT_AND_DENSITY,
        ),
        _ta("breadcrumbs", tv.breadcrumbs, normalize=False, rescale=False, ref=_BREADCRUMBS),
        _ta(
            "breadcrumbs_ties",
            tv.breadcrumbs_ties,
            normalize=False,
            rescale=False,
            ref=_BREADCRUMBS,
        ),
        _ta(
            "della",
            tv.della,
            normalize=True,
            rescale=True,
            ref=_DELLA,
            seeded=True,
            genome=_WEIGHT_AND_DENSITY,
        ),
        _ta(
            "della_linear",
            tv.della_linear,
            normalize=False,
            rescale=True,
            ref=_DELLA,
            seeded=True,
            genome=_WEIGHT_AND_DENSITY,
        ),
        Method(
            "sce",
            tv.sce,
            per_model={},
            shared={
                "int8_mask": _INT8_MASK,
                "select_topk": Param(float, default=1.0, low=0.0, high=1.0),
            },
            needs_base=True,
            reference="arXiv:2408.07990",
            genome={"select_topk": "density"},  # a keep share, one per layer group
        ),
        Method(
            "ram",
            tv.ram,
            per_model={},
            shared={"epsilon": _NONNEGATIVE},
            needs_base=True,
            reference=_RAM,
        ),
        Method(
            "ramplus_tl",
            tv.ramplus_tl,
            per_model={},
            shared={
                "r": Param(float, default=0.1, low=0.0),
                "alpha": Param(float, default=0.2, low=0.0),
                "epsilon": _NONNEGATIVE,
            },
            needs_base=True,
            reference=_RAM,
        ),
        Method(
            "arcee_fusion",
            tv.arcee_fusion,
            per_model={},
            shared={},
            needs_base=True,
            max_models=1,
        ),
        Method(
            "slerp",
            ip.slerp,
            per_model={},
            shared={"t": Param(float)},
            needs_base=True,
            max_models=1,
            converts_inputs=True,
        ),
        Method(
            "nuslerp",
            ip.nuslerp,
            per_model={"weight": _WEIGHT},
            shared={
                "nuslerp_row_wise": Param(bool, default=False),
                "nuslerp_flatten": Param(bool, default=True),
            },
            needs_base=False,
            optional_base=True,
            min_models=2,
            max_models=2,
        ),
        Method(
            "multislerp",
            ip.multislerp,
            per_model={"weight": _WEIGHT},
            shared={
                "normalize_weights": Param(bool, default=True),
                "eps": Param(float, default=1e-8, low=0.0),
            },
            needs_base=False,
            optional_base=True,
            reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
        ),
        Method(
            "karcher",
            ip.karcher,
            per_model={},
            shared={
                "max_iter": Param(int, default=10, low=0, high=MAX_KARCHER_ITER),
                "tol": Param(float, default=1e-5, low=0.0),
            },
            needs_base=False,
            reference="arXiv:2603.04972",
        ),
        Method(
            "nearswap",
            ip.nearswap,
            per_model={},
            shared={"t": Param(float, low=0.0)},
            needs_base=True,
            max_models=1,
        ),
        Method(
            "passthrough",
            ip.passthrough,
            per_model={"scale": Param(float, default=None, optional=True)},
            shared={},
            needs_base=False,
            max_models=1,
        ),
        Method(
            "model_stock",
            ip.model_stock,
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
        raise RecipeError(f"{path}: unknown merge method {preview(name)}; valid methods: {valid}")
    return METHODS[name]
