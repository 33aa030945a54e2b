"""A refused or failed merge leaves the file system as it found it: the parent directories it
made are gone, files it did not write are never deleted, and --keep-intermediates can be rerun
after a later stage failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.__main__ import main
from evomerge.errors import MergeError
from evomerge.merge import merge_to_disk
from evomerge.merge.out_dir import MARKER, Staging
from evomerge.recipe import load_recipe


def linear(*refs: object, weight: str = "0.5") -> str:
    entries = "".join(f"  - {{model: '{r}', parameters: {{weight: {weight}}}}}\n" for r in refs)
    return f"merge_method: linear\nparameters: {{normalize: false}}\nmodels:\n{entries}"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_failed_merge_removes_the_parent_directories_it_made(
    family: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "kept").mkdir()  # existed before: stays
    before = _tree(tmp_path)
    overflow = load_recipe(linear(family["a"], family["c"], weight="1.0e308"))
    with pytest.raises(MergeError):
        merge_to_disk(overflow, tmp_path / "kept" / "new" / "deeper" / "out")
    assert _tree(tmp_path) == before


def test_a_made_parent_that_someone_else_filled_is_kept(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "new" / "out")
    with pytest.raises(RuntimeError), staging as work:
        assert (work / MARKER).is_file()  # the mark of a merge's own staging directory
        (tmp_path / "new" / "theirs.txt").write_text("another process wrote here")
        raise RuntimeError("the merge fails")
    assert _tree(tmp_path) == ["new", "new/theirs.txt"]


def test_a_users_look_alike_directory_survives_a_refused_merge(
    family: dict[str, Path], tmp_path: Path
) -> None:
    users = tmp_path / ".out.notes.partial"  # named like a staging directory, but the user's
    users.mkdir()
    (users / "mine.txt").write_text("not a merge's")
    overflow = load_recipe(linear(family["a"], family["c"], weight="1.0e308"))
    with pytest.raises(MergeError):
        merge_to_disk(overflow, tmp_path / "out")
    merge_to_disk(load_recipe(linear(family["a"], family["c"])), tmp_path / "out")
    assert (users / "mine.txt").read_text() == "not a merge's"
    assert _tree(tmp_path) == sorted(
        [".out.notes.partial", ".out.notes.partial/mine.txt", "out", *_in("out", tmp_path)]
    )


def _in(name: str, root: Path) -> list[str]:
    return [f"{name}/{p.name}" for p in (root / name).iterdir()]


def _stages(family: dict[str, Path], second: str) -> str:
    first = f"name: s1\n{linear(family['a'], family['c'])}"
    return f"{first}---\nname: s2\n{linear('s1', second)}---\n{linear('s2', family['c'])}"


def test_keep_intermediates_can_be_rerun_after_a_later_stage_failed(
    family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, keep, out = tmp_path / "r.yaml", tmp_path / "new" / "keep", tmp_path / "out"
    recipe.write_text(_stages(family, str(tmp_path / "no_such_model")))
    argv = ["merge", str(recipe), str(out), "--no-progress", "--keep-intermediates", str(keep)]
    assert main(argv) == 2  # s1 is written, then s2 fails
    assert "no_such_model" in capsys.readouterr().err
    assert _tree(tmp_path) == ["r.yaml"]  # s1 and the directories made for it are gone
    recipe.write_text(_stages(family, str(family["b"])))
    assert main(argv) == 0
    assert sorted(p.name for p in keep.iterdir()) == ["s1", "s2"] and out.is_dir()


def test_keep_intermediates_refuses_a_stage_result_that_exists_before_merging(
    family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, keep = tmp_path / "r.yaml", tmp_path / "keep"
    recipe.write_text(_stages(family, str(family["b"])))
    (keep / "s2").mkdir(parents=True)
    (keep / "s2" / "theirs.txt").write_text("x")
    argv = ["merge", str(recipe), str(tmp_path / "out"), "--keep-intermediates", str(keep)]
    assert main(argv) == 2
    assert "s2 already exists" in capsys.readouterr().err
    assert _tree(tmp_path) == ["keep", "keep/s2", "keep/s2/theirs.txt", "r.yaml"]
