"""Multi-stage recipes (mergekit-multi's format): named stages, used by later ones by name."""

from pathlib import Path

import pytest
import torch

from evomerge.__main__ import main
from evomerge.errors import RecipeError
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.merge.multistage import load_stages, merge_stages_to_disk
from evomerge.recipe import load_recipe
from evomerge_dev.testing import load_tensors as _load


def _stage_one(f: dict[str, Path]) -> str:
    return (
        f"merge_method: ties\nbase_model: {f['base']}\n"
        f"models: [{{model: {f['a']}, parameters: {{weight: 0.6, density: 0.5}}}}, "
        f"{{model: {f['b']}, parameters: {{weight: 0.4, density: 0.7}}}}]\n"
    )


def _stage_two(f: dict[str, Path], ab: str) -> str:
    return (
        f"merge_method: nuslerp\nbase_model: {f['base']}\n"
        f"models: [{{model: {ab}, parameters: {{weight: 0.7}}}}, "
        f"{{model: {f['c']}, parameters: {{weight: 0.3}}}}]\n"
    )


@pytest.mark.parametrize("name", ["ab", "final"])
def test_two_stages_equal_the_stages_run_by_hand(
    name: str, family: dict[str, Path], tmp_path: Path
) -> None:
    text = f"name: {name}\n{_stage_one(family)}---\n{_stage_two(family, name)}"
    out = merge_stages_to_disk(load_stages(text), tmp_path / "out", MergeOptions())
    ab = merge_to_disk(load_recipe(_stage_one(family)), tmp_path / "hand" / "ab")
    hand = merge_to_disk(load_recipe(_stage_two(family, str(ab))), tmp_path / "hand" / "out")
    ours, theirs = _load(out), _load(hand)
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hand", "out"]  # intermediates gone
    card = (out / "README.md").read_text()
    assert f"name: {name}" in card and f"model: {name}" in card and "2 stages" in card
    assert load_stages(card.split("```yaml\n")[1].split("```")[0]) == load_stages(text)


def test_cli_keeps_intermediates_when_asked(family: dict[str, Path], tmp_path: Path) -> None:
    # Final (unnamed) document first: stages run in dependency order, not file order.
    text = f"{_stage_two(family, 'ab')}---\nname: ab\n{_stage_one(family)}"
    (tmp_path / "multi.yaml").write_text(text)
    keep = tmp_path / "stages"
    args = ["merge", str(tmp_path / "multi.yaml"), str(tmp_path / "out"), "--no-progress"]
    assert main([*args, "--keep-intermediates", str(keep)]) == 0
    assert (keep / "ab" / "config.json").is_file() and (tmp_path / "out" / "config.json").is_file()
    assert torch.equal(
        _load(keep / "ab")["model.norm.weight"],
        _load(merge_to_disk(load_recipe(_stage_one(family)), tmp_path / "ab"))["model.norm.weight"],
    )


def _bad(f: dict[str, Path]) -> dict[str, tuple[str, str]]:
    one, two = _stage_one(f), _stage_two(f, "ab")
    return {
        "duplicate_name": (
            f"name: ab\n{one}---\nname: ab\n{one}",
            "document 2.name: 'ab' is used twice",
        ),
        "two_unnamed": (f"{one}---\n{one}", "document 2: only one document may be unnamed"),
        "cycle": (
            f"name: ab\n{_stage_two(f, 'cd')}---\nname: cd\n{_stage_two(f, 'ab')}---\n{one}",
            "stages: circular use of results: ab -> cd -> ab",
        ),
        "bad_name": (f"name: ../up\n{one}---\n{two}", "document 1.name: must be letters, digits"),
        "bad_parameter": (
            f"name: ab\n{one}---\n{two.replace('weight: 0.3', 'weight: 0.3, density: 2')}",
            "document 2: models[1].parameters.density: unknown parameter for nuslerp",
        ),
        "missing_model_in_later_stage": (
            f"name: ab\n{one}---\n{_stage_two(f, 'abc')}",
            "model 'abc': no such directory",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "duplicate_name",
        "two_unnamed",
        "cycle",
        "bad_name",
        "bad_parameter",
        "missing_model_in_later_stage",
    ],
)
def test_bad_multi_stage_recipes_exit_2_and_write_nothing(
    case: str, family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, message = _bad(family)[case]
    (tmp_path / "multi.yaml").write_text(text)
    code = main(["merge", str(tmp_path / "multi.yaml"), str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi.yaml"]


def test_a_stage_name_is_checked_before_any_work(family: dict[str, Path]) -> None:
    with pytest.raises(RecipeError, match=r"document 1\.name: must be letters"):
        load_stages(f"name: 'a b'\n{_stage_one(family)}---\n{_stage_two(family, 'ab')}")


def test_a_ps_merge_then_a_layer_path_over_it(family: dict[str, Path], tmp_path: Path) -> None:
    """A PS+DFS result as one file: the PS merge, then a data-flow path using it by name."""
    path = (
        "merge_method: passthrough\nslices:\n"
        "  - sources: [{model: ps, layer_range: [0, 2]}]\n"
        f"  - sources: [{{model: {family['a']}, layer_range: [1, 3]}}]\n    input_scale: 0.8\n"
    )
    text = f"name: ps\n{_stage_one(family)}---\n{path}"
    out = merge_stages_to_disk(load_stages(text), tmp_path / "out")
    ps = merge_to_disk(load_recipe(_stage_one(family)), tmp_path / "ps")
    hand = merge_to_disk(load_recipe(path.replace("model: ps", f"model: {ps}")), tmp_path / "hand")
    ours, theirs = _load(out), _load(hand)
    assert len(ours) == len(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
