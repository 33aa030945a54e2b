"""One contract suite, run over every registered merge method (pure tensor functions)."""

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from evomerge.merge.methods import METHODS, REQUIRED, MergeArgs, Method

NAMES = sorted(METHODS)
# Methods with an optional base run both ways: on task vectors (`name+base`) and on raw tensors.
CASES = sorted(
    [n for n in NAMES if not METHODS[n].needs_base]
    + [f"{n}+base" for n in NAMES if METHODS[n].uses_base]
)
# No parameter picks one model (a mixing weight, slerp's t, nearswap's t): for these, model k
# is returned when every input equals it.
SELECT_BY_EQUAL_INPUTS = {"model_stock", "karcher", "sce", "ram", "ramplus_tl"}


def _case(case: str) -> tuple[Method, bool]:
    name, _, with_base = case.partition("+")
    return METHODS[name], bool(with_base)


def _inputs(
    method: Method, seed: int = 0, *, with_base: bool | None = None
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    n = max(method.min_models, min(3, method.max_models or 3))
    with_base = method.needs_base if with_base is None else with_base
    base = torch.randn(6, 5, generator=gen) if with_base else None
    anchor = base if base is not None else torch.zeros(6, 5)
    return [anchor + 0.1 * torch.randn(6, 5, generator=gen) for _ in range(n)], base


def _args(method: Method, n: int, seed: int = 0, **per_model: Sequence[Any]) -> MergeArgs:
    values: dict[str, Sequence[Any]] = {}
    for name, param in method.per_model.items():
        default = 1.0 / n if param.default is REQUIRED else param.default
        values[name] = per_model.get(name, [default] * n)
    shared = {k: 0.5 if p.default is REQUIRED else p.default for k, p in method.shared.items()}
    gens = (
        [torch.Generator().manual_seed(seed * 100 + i) for i in range(n)] if method.seeded else []
    )
    return MergeArgs(per_model=values, shared=shared, generators=gens)


def _selecting_args(method: Method, n: int, k: int) -> MergeArgs:
    """Arguments under which the merge should return input k unchanged."""
    if "weight" in method.per_model:
        onehot = [1.0 if i == k else 0.0 for i in range(n)]
        return _args(method, n, weight=onehot, density=[1.0] * n)
    args = _args(method, n)
    if method.name == "slerp":
        return MergeArgs(shared={"t": 1.0})
    if method.name == "nearswap":  # t beyond every |base - x|: take x everywhere
        return MergeArgs(shared={"t": 1e9})
    return args


@pytest.mark.parametrize("case", CASES)
def test_shape_and_dtype_are_kept(case: str) -> None:
    method, with_base = _case(case)
    tensors, base = _inputs(method, with_base=with_base)
    out = method.fn(tensors, base, _args(method, len(tensors)))
    assert out.shape == tensors[0].shape and out.dtype == tensors[0].dtype


@pytest.mark.parametrize("case", CASES)
def test_identical_inputs_give_the_input_back(case: str) -> None:
    method, with_base = _case(case)
    tensors, base = _inputs(method, with_base=with_base)
    same = [tensors[0].clone() for _ in tensors]
    out = method.fn(
        same, tensors[0].clone() if base is not None else None, _args(method, len(same))
    )
    torch.testing.assert_close(out, tensors[0], rtol=1e-6, atol=1e-6)


# arcee_fusion takes one model's changes only where they matter: no parameter selects it whole.
@pytest.mark.parametrize("case", [c for c in CASES if _case(c)[0].name != "arcee_fusion"])
def test_weight_one_on_one_model_gives_that_model(case: str) -> None:
    method, with_base = _case(case)
    tensors, base = _inputs(method, with_base=with_base)
    k = len(tensors) - 1
    if method.name in SELECT_BY_EQUAL_INPUTS:
        tensors = [tensors[k].clone() for _ in tensors]
    out = method.fn(tensors, base, _selecting_args(method, len(tensors), k))
    torch.testing.assert_close(out, tensors[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["random", "zeros", "opposed"])
def test_no_nan(case: str, kind: str) -> None:
    method, with_base = _case(case)
    tensors, base = _inputs(method, with_base=with_base)
    if kind == "zeros":
        tensors = [torch.zeros_like(t) for t in tensors]
        base = torch.zeros_like(base) if base is not None else None
    if kind == "opposed" and len(tensors) > 1:
        anchor = base if base is not None else torch.zeros_like(tensors[0])
        tensors[1] = 2 * anchor - tensors[0]  # exactly opposite update
    out = method.fn(tensors, base, _args(method, len(tensors)))
    assert not out.isnan().any()


@pytest.mark.parametrize("case", CASES)
def test_deterministic_given_a_seed(case: str) -> None:
    method, with_base = _case(case)
    tensors, base = _inputs(method, with_base=with_base)
    n = len(tensors)
    first = method.fn(tensors, base, _args(method, n, seed=7, density=[0.5] * n))
    again = method.fn(tensors, base, _args(method, n, seed=7, density=[0.5] * n))
    assert torch.equal(first, again)
    other = method.fn(tensors, base, _args(method, n, seed=8, density=[0.5] * n))
    assert torch.equal(first, other) != method.seeded  # only seeded methods depend on the seed


def test_registry_declares_every_method_of_mergekit() -> None:
    expected = {
        "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
        "breadcrumbs_ties", "slerp", "passthrough", "model_stock", "della", "della_linear",
        "nuslerp", "multislerp", "karcher", "sce", "ram", "ramplus_tl", "nearswap",
        "arcee_fusion",
    }  # fmt: skip
    assert set(METHODS) == expected
    seeded = {"dare_ties", "dare_linear", "della", "della_linear"}
    assert {n for n, m in METHODS.items() if m.seeded} == seeded
    optional = {"nuslerp", "multislerp"}
    assert {n for n, m in METHODS.items() if m.optional_base} == optional
    unused = {"linear", "passthrough", "karcher"}
    assert {n for n, m in METHODS.items() if m.needs_base} == expected - optional - unused


# --- the documented differences from mergekit (README, "Merging") ----------------------------


def test_multislerp_without_a_direction_gives_the_weighted_linear_combination() -> None:
    """Every task vector zero (a tensor no fine-tune changed): the base back, for 3 models too
    (mergekit raises there)."""
    method = METHODS["multislerp"]
    base = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    same = [base.clone() for _ in range(3)]
    out = method.fn(same, base, _args(method, 3))
    torch.testing.assert_close(out, base)
    a = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    args = _args(method, 3, weight=[0.25, 0.25, 0.5])  # a and -a balance, the third is zero
    out = method.fn([a, -a, torch.zeros_like(a)], None, args)
    torch.testing.assert_close(out, torch.zeros_like(a))


def test_della_keeps_a_one_entry_row_with_probability_density() -> None:
    method = METHODS["della_linear"]
    base = torch.zeros(4000, 1)  # rows of one entry: no magnitude rank within the row
    x = torch.ones(4000, 1)
    args = _args(method, 1, density=[0.3], epsilon=[0.2])
    args = MergeArgs(
        per_model=args.per_model,
        shared={**args.shared, "rescale": False},
        generators=[torch.Generator().manual_seed(5)],
    )
    kept = method.fn([x], base, args).mean().item()
    assert abs(kept - 0.3) < 0.03  # 4000 draws: 4 sigma is about 0.03


def test_della_keeps_large_entries_more_often() -> None:
    method = METHODS["della_linear"]
    x = torch.arange(1, 1001, dtype=torch.float32).repeat(400, 1)  # (400, 1000) rows of ranks
    args = _args(method, 1, density=[0.5], epsilon=[0.4])
    args = MergeArgs(
        per_model=args.per_model,
        shared={**args.shared, "rescale": False},
        generators=[torch.Generator().manual_seed(2)],
    )
    kept = (method.fn([x], torch.zeros_like(x), args) != 0).float().mean(dim=0)  # per column
    assert abs(kept[:100].mean().item() - 0.14) < 0.02  # p runs 0.1 -> 0.9 over the ranks
    assert abs(kept[-100:].mean().item() - 0.86) < 0.02
    assert abs(kept.mean().item() - 0.5) < 0.01


def test_arcee_fusion_keeps_the_upper_outliers_of_importance() -> None:
    method = METHODS["arcee_fusion"]
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(50, 40, generator=gen)
    x = base + 0.01 * torch.randn(50, 40, generator=gen)
    x[7, 3] += 5.0  # one large change in one row: the only important entry there
    out = method.fn([x], base, MergeArgs())
    changed = out != base
    assert changed[7, 3] and changed.float().mean() < 0.2
    torch.testing.assert_close(out[changed], x[changed])


def test_slerp_in_row_blocks_equals_the_whole_tensor_formula(monkeypatch) -> None:
    from evomerge.merge.methods import interpolation

    gen = torch.Generator().manual_seed(8)
    v0 = torch.randn(70, 90, generator=gen)
    v1 = v0 + 0.3 * torch.randn(70, 90, generator=gen)
    args = MergeArgs(shared={"t": 0.3})
    monkeypatch.setattr(interpolation, "BLOCK", 1000)
    out = interpolation.slerp([v1], v0, args)
    a, b = v0.reshape(-1), v1.reshape(-1)
    dot = float(((a / a.norm()) * (b / b.norm())).sum())
    theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
    c0 = float(torch.sin(0.7 * theta) / torch.sin(theta))
    c1 = float(torch.sin(0.3 * theta) / torch.sin(theta))
    torch.testing.assert_close(out, c0 * v0 + c1 * v1, rtol=1e-6, atol=1e-6)


def test_slerp_angle_of_a_large_near_collinear_pair_is_exact() -> None:
    """A million-entry pair just inside the lerp threshold (|cos| > 0.9995) is lerped.

    bf16-valued entries (a half-precision base converted to float32) make a float32 dot of a
    million entries drift by ~1e-5 relative, enough to cross the threshold and slerp instead
    (the real-checkpoint oracle's embeddings; mergekit lerps)."""
    from evomerge.merge.methods import interpolation

    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn(1024, 1024, generator=gen).bfloat16().float()
    v1 = v0 + 0.0314 * torch.randn(1024, 1024, generator=gen)
    a, b = v0.double().reshape(-1), v1.double().reshape(-1)
    cos = float(a @ b / (a.norm() * b.norm()))
    assert 0.9995 < cos < 0.99952  # exact angle: inside the threshold, by less than the drift
    out = interpolation.slerp([v1], v0, MergeArgs(shared={"t": 0.6}))
    torch.testing.assert_close(out, 0.4 * v0 + 0.6 * v1, rtol=0, atol=1e-6)
