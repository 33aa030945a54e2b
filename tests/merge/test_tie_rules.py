"""Ties broken as mergekit 0.1.5 breaks them, on task vectors whose magnitudes tie a lot.

The checkpoints are bfloat16 values (base + small bfloat16 noise): their float32 copies have
deltas with few distinct magnitudes, so every selection's cut falls among equal ones. Whole
merges of the float32 copies must equal mergekit's exactly; on bfloat16 tensors (where
mergekit also computes in bfloat16 and evomerge in float32) the kept entries and DELLA's ranks
must be mergekit's.
"""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import RecipeError
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.merge.methods.task_vectors import _top_variance_mask, magnitude_ranks
from evomerge.merge.selection import (
    MERGEKIT,
    THRESHOLD,
    Selection,
    recipe_tie_rule,
    search_tie_rule,
)
from evomerge.merge.sparsify import sparsify_
from evomerge.recipe import dump_recipe, load_recipe
from evomerge_dev.testing import make_tiny_llama

mergekit_sparsify = pytest.importorskip("mergekit.sparsify")
mergekit_sce = pytest.importorskip("mergekit.merge_methods.sce")
oracle = pytest.importorskip("tests.merge.test_mergekit_oracle")

TIE_CASES = {
    "ties": """
merge_method: ties
base_model: $base
models:
  - {model: $a, parameters: {weight: 0.6, density: 0.4}}
  - {model: $b, parameters: {weight: 0.5, density: 0.2}}
  - {model: $c, parameters: {weight: 0.3, density: 0.7}}
""",
    # the oracle's own recipes, here on tie-heavy data
    "ties_rescaled": oracle.CASES["ties_rescaled"],
    "breadcrumbs": oracle.CASES["breadcrumbs"],
    "breadcrumbs_ties": """
merge_method: breadcrumbs_ties
base_model: $base
parameters: {normalize: true}
models:
  - {model: $a, parameters: {weight: 0.5, density: 0.7, gamma: 0.02}}
  - {model: $b, parameters: {weight: 0.8, density: 0.9}}
  - {model: $c, parameters: {weight: 0.4, density: 0.5, gamma: 0.1}}
""",
    "sce_select_topk": """
merge_method: sce
base_model: $base
parameters: {select_topk: 0.4}
models: [{model: $a}, {model: $b}, {model: $c}]
""",
}
NOISE = 0.002  # bfloat16 noise on weights of about 0.02: a few dozen magnitudes per tensor


def _float32_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for file in dst.glob("*.safetensors"):
        save_file({k: v.float() for k, v in load_file(file).items()}, file)
    return dst


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """bfloat16 checkpoints (base, a, b, c) and their float32 copies (f_base, ...)."""
    root = tmp_path_factory.mktemp("tied")
    bf16 = torch.bfloat16
    base = make_tiny_llama(root / "base", seed=40, num_layers=2, hidden_size=64, dtype=bf16)
    models = {"base": base}
    for name, seed in (("a", 41), ("b", 42), ("c", 43)):
        models[name] = make_tiny_llama(root / name, seed=seed, base=base, noise=NOISE, dtype=bf16)
    return models | {f"f_{k}": _float32_copy(v, root / f"f_{k}") for k, v in models.items()}


def _render(template: str, models: dict[str, Path]) -> str:
    return oracle._render(template, {k: models[f"f_{k}"] for k in ("base", "a", "b", "c")})


@pytest.mark.parametrize("case", sorted(TIE_CASES))
def test_tie_heavy_merges_equal_mergekit(case: str, tied: dict[str, Path], tmp_path: Path) -> None:
    text = _render(TIE_CASES[case], tied)
    theirs = oracle._run_mergekit(text, tmp_path / "mergekit")
    ours = oracle._load(merge_to_disk(load_recipe(text), tmp_path / "ours", MergeOptions()))
    assert oracle.max_abs_diff(ours, theirs) == 0
    # the ties matter: the threshold rule keeps other entries
    fast = load_recipe("tie_rule: threshold\n" + text)
    other = oracle._load(merge_to_disk(fast, tmp_path / "threshold"))
    assert oracle.max_abs_diff(other, theirs) > 0


def _bf16_deltas(tied: dict[str, Path]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, float32 delta of model a, mergekit's bfloat16 delta) for each matrix."""
    base, a = oracle._load(tied["base"]), oracle._load(tied["a"])
    return [(k, a[k].float() - base[k].float(), a[k] - base[k]) for k in base if base[k].dim() == 2]


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_bfloat16_magnitude_and_outliers_keep_mergekit_entries(
    density: float, tied: dict[str, Path]
) -> None:
    selection = Selection(MERGEKIT, torch.bfloat16)
    differs = False
    for name, delta, narrow in _bf16_deltas(tied):
        for method, theirs in (
            ("magnitude", mergekit_sparsify.magnitude(narrow, density)),
            ("outliers", mergekit_sparsify.magnitude_outliers(narrow, density, gamma=0.05)),
        ):
            ours = delta.clone()
            sparsify_(method, ours, density=density, gamma=0.05, selection=selection)
            assert torch.equal(ours != 0, theirs != 0), (name, method)
            fast = delta.clone()
            sparsify_(method, fast, density=density, gamma=0.05)  # the threshold rule
            differs |= not torch.equal(fast != 0, theirs != 0)
    assert differs


def test_bfloat16_sce_selection_is_mergekits(tied: dict[str, Path]) -> None:
    base = oracle._load(tied["base"])
    models = [oracle._load(tied[k]) for k in ("a", "b", "c")]
    for name, b in base.items():
        ours = torch.stack([m[name].float() - b.float() for m in models])
        theirs = mergekit_sce.sce_mask(torch.stack([m[name] - b for m in models]), 0.4)
        mask = _top_variance_mask(ours, 0.4, Selection(MERGEKIT, torch.bfloat16))
        assert torch.equal(mask != 0, theirs != 0), name


@pytest.mark.parametrize("narrow", [torch.float32, torch.bfloat16])
def test_della_ranks_are_mergekits(narrow: torch.dtype, tied: dict[str, Path]) -> None:
    """mergekit's della_magprune draws torch.bernoulli(p) from the global generator: with the
    same seed and p computed (as mergekit computes it) from our ranks, it keeps the same
    entries iff the ranks are the same."""
    density, epsilon = 0.5, 0.2
    selection = Selection(MERGEKIT, None if narrow == torch.float32 else narrow)
    differs = narrow == torch.float32  # float32: the threshold rule ranks the same keys
    for name, delta, bf16_delta in _bf16_deltas(tied):
        differs |= not torch.equal(magnitude_ranks(delta, selection), magnitude_ranks(delta, None))
        theirs_in = delta if narrow == torch.float32 else bf16_delta
        torch.manual_seed(7)
        theirs = mergekit_sparsify.della_magprune(theirs_in, density, epsilon)
        ranks = magnitude_ranks(delta, selection).to(narrow) + 1  # mergekit: 1..n, its dtype
        low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
        p = (density - epsilon) + ((ranks - low) / (high - low)).clamp(0, 1) * 2 * epsilon
        torch.manual_seed(7)
        kept = (torch.bernoulli(p) != 0) & (theirs_in != 0)  # kept zeros stay zero
        assert torch.equal(kept, theirs != 0), name
    assert differs


def test_tie_rule_key_round_trips_and_is_checked() -> None:
    head = "merge_method: linear\nmodels: [{model: /x}]\n"
    assert load_recipe(head).tie_rule is None
    recipe = load_recipe("tie_rule: threshold\n" + head)
    assert recipe.tie_rule == THRESHOLD
    assert "tie_rule: threshold" in dump_recipe(recipe)
    with pytest.raises(RecipeError, match=r"^tie_rule: must be one of mergekit, threshold"):
        load_recipe("tie_rule: sorted\n" + head)


def test_default_rule_and_the_searchs_rule() -> None:
    assert recipe_tie_rule(None, None) == recipe_tie_rule(None, "torch_cpu") == MERGEKIT
    assert recipe_tie_rule(None, "counter") == THRESHOLD  # the search's recipes before the key
    assert recipe_tie_rule(MERGEKIT, "counter") == MERGEKIT
    assert search_tie_rule("ties") == search_tie_rule("della") == THRESHOLD
    assert search_tie_rule("dare_ties") is None and search_tie_rule("linear") is None


def test_without_straddling_ties_both_rules_give_the_same_bytes() -> None:
    delta = torch.randn(400, 300, generator=torch.Generator().manual_seed(5))  # no ties
    k = int(0.3 * delta.numel())
    order = torch.argsort(delta.abs().reshape(-1), descending=True)[:k]
    expected = torch.zeros(delta.numel()).index_fill_(0, order, 1.0).view_as(delta) * delta
    for rule in (MERGEKIT, THRESHOLD):
        out = delta.clone()
        sparsify_("magnitude", out, density=0.3, selection=Selection(rule))
        assert torch.equal(out.view(torch.int32), expected.view(torch.int32)), rule


def test_counter_recipes_without_the_key_keep_the_threshold_rule(
    tied: dict[str, Path], tmp_path: Path
) -> None:
    """Recipes the search wrote before `tie_rule` merge to the bytes they merged to."""
    head = f"merge_method: della\nbase_model: {tied['base']}\ndrop_scheme: counter\n"
    models = "".join(
        f"  - {{model: {tied[k]}, parameters: {{weight: 0.5, density: 0.5, epsilon: 0.2}}}}\n"
        for k in ("a", "b")
    )
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for rule in ("", "tie_rule: threshold\n", "tie_rule: mergekit\n"):
        recipe = load_recipe(head + rule + "models:\n" + models)
        out = merge_to_disk(recipe, tmp_path / f"out{len(merged)}")
        merged[rule] = oracle._load(out)
    plain, threshold, exact = merged.values()
    assert all(torch.equal(plain[k], threshold[k]) for k in plain)
    assert not all(torch.equal(plain[k], exact[k]) for k in plain)  # bfloat16 keys tie
