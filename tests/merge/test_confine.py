"""Confinement of everything read for a model: vocabulary building reads tokenizer files
through the same check as the weights, and a Hugging Face cache snapshot is recognised by
what its path resolves to, with links only into its own blobs/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from evomerge.errors import MergeError
from evomerge.merge import merge_to_disk
from evomerge.merge.confine import ModelRoot
from evomerge.merge.multistage import load_stages, merge_stages_to_disk
from evomerge.recipe import load_recipe

SECRET = "secret-4d1f: this line lives outside every model directory\n"
OUTSIDE = "resolves outside the model directory"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def linear(*refs: object, extra: str = "") -> str:
    entries = "".join(f"  - {{model: '{r}', parameters: {{weight: 0.5}}}}\n" for r in refs)
    return f"merge_method: linear\n{extra}models:\n{entries}"


def _published(out: Path) -> str:
    return "".join(f.read_text(errors="replace") for f in out.iterdir() if f.is_file())


# Every way a recipe builds a vocabulary, each with the evil model in the place it reads.
VOCABULARY_RECIPES: dict[str, Callable[[Path, Path], str]] = {
    "tokenizer_source_base": lambda evil, a: linear(
        evil, a, extra=f"base_model: '{evil}'\ntokenizer_source: base\n"
    ),
    "tokenizer_source_union": lambda evil, a: linear(a, evil, extra="tokenizer_source: union\n"),
    "tokenizer_source_model": lambda evil, a: linear(
        a, evil, extra=f"tokenizer_source: '{evil}'\n"
    ),
    "tokenizer_section": lambda evil, a: linear(
        a, evil, extra="tokenizer: {source: union, pad_to_multiple_of: 8}\n"
    ),
}


@pytest.mark.parametrize("file", ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"])
@pytest.mark.parametrize("recipe", sorted(VOCABULARY_RECIPES))
def test_vocabulary_building_never_reads_outside(
    family: dict[str, Path], tmp_path: Path, secret: Path, recipe: str, file: str
) -> None:
    evil = copy_model(family["c"], tmp_path / "evil")
    (evil / file).unlink(missing_ok=True)
    (evil / file).symlink_to(secret)
    text = VOCABULARY_RECIPES[recipe](evil, family["a"])
    with pytest.raises(MergeError, match=f"{file}: {OUTSIDE}"):
        merge_to_disk(load_recipe(text), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", sorted(VOCABULARY_RECIPES))
def test_vocabulary_building_publishes_the_models_own_chat_template(
    family: dict[str, Path], tmp_path: Path, recipe: str
) -> None:
    """The legitimate case: a template inside the model reaches the output."""
    model = copy_model(family["c"], tmp_path / "chat")
    (model / "chat_template.jinja").write_text("{{ messages[0]['content'] }} chat-7e2\n")
    out = merge_to_disk(load_recipe(VOCABULARY_RECIPES[recipe](model, family["a"])), tmp_path / "o")
    if recipe != "tokenizer_source_union" and recipe != "tokenizer_section":
        assert "chat-7e2" in _published(out)
    assert (out / "tokenizer.json").is_file() and not (out / "tokenizer.json").is_symlink()


def hub_snapshot(cache: Path, source: Path, repo: str = "models--org--tiny") -> Path:
    """A Hugging Face cache entry: snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    blobs, snapshot = cache / repo / "blobs", cache / repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(source.iterdir())):
        (blobs / f"blob{i}").write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(f"../../blobs/blob{i}")
    return snapshot


@pytest.mark.parametrize("source", ["a", "b"])  # b is sharded (an index and three shards)
def test_hub_snapshots_merge_plain_and_through_a_users_symlink(
    family: dict[str, Path], tmp_path: Path, source: str
) -> None:
    snapshot = hub_snapshot(tmp_path / "hub", family[source])
    (tmp_path / "models").mkdir()
    tiny = tmp_path / "models" / "tiny"
    tiny.symlink_to(snapshot)  # the layout huggingface_hub users make
    for i, ref in enumerate([snapshot, tiny]):
        extra = f"base_model: '{ref}'\ntokenizer_source: base\n"
        out = merge_to_disk(load_recipe(linear(ref, family["c"], extra=extra)), tmp_path / f"o{i}")
        assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    repo = snapshot.parent.parent.resolve()
    assert ModelRoot.of(tiny).roots == (repo / "snapshots" / "abc123", repo / "blobs")


def test_a_snapshot_may_link_only_into_its_own_blobs(
    family: dict[str, Path], tmp_path: Path, secret: Path
) -> None:
    snapshot = hub_snapshot(tmp_path / "hub", family["a"])
    repo = snapshot.parent.parent
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SECRET)  # inside models--org--tiny/, not in blobs/
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to("../../refs/main")
    with pytest.raises(MergeError, match=f"tokenizer.json: {OUTSIDE}"):
        merge_to_disk(load_recipe(linear(snapshot, family["c"])), tmp_path / "out")


def test_a_directory_only_named_like_a_snapshot_is_no_snapshot(
    family: dict[str, Path], tmp_path: Path, secret: Path
) -> None:
    """What the path resolves to decides: a link named .../snapshots/r1 that points to a
    plain directory gets that directory as its only root."""
    plain = copy_model(family["a"], tmp_path / "plain")
    (tmp_path / "models--x" / "blobs").mkdir(parents=True)
    (tmp_path / "models--x" / "blobs" / "b").write_text(SECRET)
    (tmp_path / "models--x" / "snapshots").mkdir()
    named = tmp_path / "models--x" / "snapshots" / "r1"
    named.symlink_to(plain)
    assert ModelRoot.of(named).roots == (plain.resolve(),)
    (plain / "tokenizer.json").unlink()
    (plain / "tokenizer.json").symlink_to(tmp_path / "models--x" / "blobs" / "b")
    with pytest.raises(MergeError, match=OUTSIDE):
        merge_to_disk(load_recipe(linear(named, family["c"])), tmp_path / "out")


def test_a_snapshot_whose_blobs_is_a_link_gets_no_blobs_root(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--x"
    (repo / "snapshots" / "r").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (repo / "blobs").symlink_to(tmp_path / "elsewhere")
    assert ModelRoot.of(repo / "snapshots" / "r").roots == ((repo / "snapshots" / "r").resolve(),)


def test_the_evaluator_check_looks_into_subdirectories(
    family: dict[str, Path], tmp_path: Path, secret: Path
) -> None:
    model = copy_model(family["a"], tmp_path / "m")
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "tool.jinja").symlink_to(secret)
    with pytest.raises(MergeError, match=f"tool.jinja: {OUTSIDE}"):
        ModelRoot.of(model).check_files([])
    (model / "additional_chat_templates" / "tool.jinja").unlink()
    (model / "linked").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(MergeError, match=f"linked: {OUTSIDE}"):
        ModelRoot.of(model).check_files([])


@pytest.mark.parametrize("depth", [65, 900])
def test_deep_json_is_refused_when_read(tmp_path: Path, depth: int) -> None:
    (tmp_path / "config.json").write_text('{"a": ' * depth + "1" + "}" * depth)
    with pytest.raises(MergeError, match="nested deeper than 64 levels"):
        ModelRoot.of(tmp_path).read_json("config.json")


def test_a_later_stages_tokenizer_outside_is_refused_before_any_stage_runs(
    family: dict[str, Path], tmp_path: Path, secret: Path
) -> None:
    evil = copy_model(family["c"], tmp_path / "evil")
    (evil / "tokenizer.json").unlink()
    (evil / "tokenizer.json").symlink_to(secret)
    overflow = linear(family["a"], family["b"], extra="parameters: {normalize: false}\n")
    first = overflow.replace("weight: 0.5", "weight: 1.0e308")  # stage s1 would fail (NaN)
    final = linear("s1", family["a"], extra=f"tokenizer_source: '{evil}'\n")
    stages = load_stages(f"name: s1\n{first}---\n{final}")
    with pytest.raises(MergeError, match=f"tokenizer.json: {OUTSIDE}"):
        merge_stages_to_disk(stages, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil", "outside"]
