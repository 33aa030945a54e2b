"""Hostile inputs, one test per class: confinement, bounded resources, one-line errors, strict
parsing, nothing left behind. Each is parametrized over variants of its class."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from evomerge.__main__ import main
from evomerge.errors import PREVIEW_CHARS, EvomergeError, MergeError, RecipeError, preview
from evomerge.evaluate.tasks import check_task_files
from evomerge.merge import merge_to_disk
from evomerge.merge.confine import ModelRoot
from evomerge.merge.io import ShardedWriter
from evomerge.merge.multistage import load_stages
from evomerge.merge.out_dir import MARKER, MARKER_TEXT, Staging, remove_stale
from evomerge.merge.recipe_checks import check_recipe
from evomerge.recipe import load_recipe
from evomerge.yaml_limits import MAX_YAML_BYTES
from evomerge_dev.testing import make_tiny_llama

CANARY = "canary-7f3a9c"
SECRET = f"{CANARY}: this line lives outside every model directory\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    base = make_tiny_llama(root / "base", seed=0)
    secret = root / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    return {"base": base, "a": make_tiny_llama(root / "a", seed=1, base=base), "secret": secret}


def linear(*refs: object) -> str:
    entries = "".join(f"  - {{model: '{r}', parameters: {{weight: 0.5}}}}\n" for r in refs)
    return f"merge_method: linear\nmodels:\n{entries}"


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def run_cli(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line; it must refuse with exit 2 and exactly one line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert len(err) < 1200
    return err


# --- 1. confinement: every file read for a model resolves inside its root ------------------


def _link(name: str) -> Callable[[Path, Path], None]:
    def make(model: Path, secret: Path) -> None:
        (model / name).unlink(missing_ok=True)
        (model / name).symlink_to(secret)

    return make


def _index_naming(shard: Callable[[Path, Path], str]) -> Callable[[Path, Path], None]:
    def make(model: Path, secret: Path) -> None:
        index = {"metadata": {}, "weight_map": {"model.norm.weight": shard(model, secret)}}
        (model / "model.safetensors.index.json").write_text(json.dumps(index))

    return make


def _fifo(model: Path, secret: Path) -> None:
    (model / "tokenizer.json").unlink(missing_ok=True)
    os.mkfifo(model / "tokenizer.json")  # inside the root, but not a regular file


OUTSIDE = {
    "tokenizer_json_link": _link("tokenizer.json"),
    "generation_config_link": _link("generation_config.json"),
    "config_json_link": _link("config.json"),
    "shard_link": _link("model.safetensors"),
    "index_absolute_shard": _index_naming(lambda m, s: str(s)),
    "index_dotdot_shard": _index_naming(lambda m, s: os.path.relpath(s, m)),
    "dangling_tokenizer_link": lambda m, s: _link("tokenizer.json")(m, m / "gone"),
    "fifo_tokenizer": _fifo,
}


@pytest.mark.parametrize("variant", sorted(OUTSIDE))
def test_files_outside_the_model_are_never_read(models, tmp_path, capsys, variant):
    evil = copy_model(models["base"], tmp_path / "evil")
    OUTSIDE[variant](evil, models["secret"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "merge_method: linear\nbase_model: " + str(evil) + "\n" + linear(evil, models["a"])[21:]
    )
    err = run_cli(tmp_path, ["merge", str(recipe), str(tmp_path / "out"), "--no-progress"], capsys)
    assert CANARY not in err and not (tmp_path / "out").exists()
    assert "evil" in err  # names the file


def hf_cache_model(cache: Path, source: Path, repo: str = "models--org--tiny") -> Path:
    """A Hugging Face cache entry: snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    blobs, snapshot = cache / repo / "blobs", cache / repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(source.iterdir())):
        (blobs / f"blob{i}").write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(f"../../blobs/blob{i}")
    return snapshot


def test_the_hugging_face_cache_layout_merges_and_its_escapes_do_not(models, tmp_path):
    snapshot = hf_cache_model(tmp_path / "hub", models["a"])
    out = merge_to_disk(load_recipe(linear(snapshot, models["base"])), tmp_path / "out")
    copied = [f for f in out.iterdir() if f.name.startswith("tokenizer")]
    assert copied and all(f.is_file() and not f.is_symlink() for f in copied)
    # a blob link that climbs out of the repository is refused like any other
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to(os.path.relpath(models["secret"], snapshot))
    with pytest.raises(MergeError, match="resolves outside the model directory"):
        merge_to_disk(load_recipe(linear(snapshot, models["base"])), tmp_path / "out2")
    repo = (tmp_path / "hub" / "models--org--tiny").resolve()
    assert ModelRoot.of(snapshot).roots == (repo / "snapshots" / "abc123", repo / "blobs")


def test_the_evaluator_refuses_a_model_directory_that_links_outside(models, tmp_path, capsys):
    evil = copy_model(models["base"], tmp_path / "evil")
    _link("tokenizer.json")(evil, models["secret"])
    err = run_cli(tmp_path, ["eval", f"model={evil}", "task=toy_mgsm_ja"], capsys)
    assert "resolves outside the model directory" in err


# --- 2. bounded resources: size, alias expansion, nesting, headers, iterations ----------------


def _laughs(levels: int, width: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "billion_laughs": _laughs(9),
    "alias_bomb_in_a_value": "merge_method: linear\nmodels: [{model: a, parameters: {weight: x}}]\n"
    + _laughs(8).replace("l7: &l7", "weightless: &l7")
    + "random_seed: *l7\n",
    "recursive_alias": "merge_method: linear\nmodels: &m [*m]\n",
    "deep_nesting": "merge_method: " + "[" * 5000 + "]" * 5000 + "\n",
    "oversized": "merge_method: linear\n# " + "x" * MAX_YAML_BYTES + "\n",
    "oversized_value": "merge_method: linear\nmodels: [{model: '" + "y" * 900_000 + "'}]\n",
    "many_documents": "a: 1\n---\n" * 200_000,
}


@pytest.mark.parametrize("variant", sorted(BOMBS))
def test_small_hostile_yaml_is_refused_within_bounded_memory(tmp_path, capsys, variant):
    path = tmp_path / "r.yaml"
    path.write_text(BOMBS[variant])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = run_cli(tmp_path, ["merge", str(path), str(tmp_path / "out")], capsys)
    assert "r.yaml" in err or "models[0]" in err
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"peak RSS grew by {grown_mb:.0f} MB"
    assert not (tmp_path / "out").exists()
    # the same limits hold for task files lm-eval will read
    if variant in ("billion_laughs", "recursive_alias", "oversized"):
        with pytest.raises(RecipeError):
            check_task_files([path])


def _header(header: object, length: int | None = None, pad: int = 0) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + b"\0" * pad


HEADERS: dict[str, Callable[[Path], None]] = {
    "length_over_100MB_sparse": lambda f: _sparse(f, 150_000_000),
    "length_past_the_end": lambda f: f.write_bytes(_header({}, length=10**6)),
    "negative_shape": lambda f: f.write_bytes(
        _header({"x": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}, pad=16)
    ),
    "float_shape": lambda f: f.write_bytes(
        _header({"x": {"dtype": "F32", "shape": [2.5, 2], "data_offsets": [0, 16]}}, pad=16)
    ),
    "huge_offset": lambda f: f.write_bytes(
        b"\x40\x00\x00\x00\x00\x00\x00\x00"
        + b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,1e400]}}'.ljust(64)
    ),
    "list_dtype": lambda f: f.write_bytes(
        _header({"x": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, pad=4)
    ),
    "nested_header": lambda f: f.write_bytes(_header({"x": []}).replace(b"[]", b"[" * 50_000)),
    "text_file": lambda f: f.write_text(SECRET * 3),
}


def _sparse(file: Path, length: int) -> None:
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", length))
        f.truncate(length + 8)


@pytest.mark.parametrize("variant", sorted(HEADERS))
def test_safetensors_headers_are_bounded_and_checked(models, tmp_path, capsys, variant):
    evil = copy_model(models["a"], tmp_path / "evil")
    HEADERS[variant](evil / "model.safetensors")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    recipe = tmp_path / "r.yaml"
    recipe.write_text(linear(models["base"], evil))
    err = run_cli(tmp_path, ["merge", str(recipe), str(tmp_path / "out")], capsys)
    assert "model.safetensors" in err and CANARY not in err
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 300


def test_iterative_methods_and_error_values_are_bounded(models):
    recipe = (
        f"merge_method: karcher\nparameters: {{max_iter: 1000000000, tol: 0}}\n"
        f"models: [{{model: {models['a']}}}, {{model: {models['base']}}}]\n"
    )
    with pytest.raises(RecipeError, match=r"parameters.max_iter: must be in \[0, 100\]"):
        check_recipe(load_recipe(recipe))
    shared = [[1.0] * 1000] * 1000
    assert len(preview(shared)) <= PREVIEW_CHARS + 3 and len(preview("z" * 10**6)) <= 83


# --- 3. one-line errors (exit 2) for file-system and structure refusals -------------------


def _out_cases(tmp: Path) -> dict[str, list[str]]:
    (tmp / "a_file").write_text("x")
    (tmp / "dangling").symlink_to(tmp / "nowhere")
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o500)
    return {
        "out_dangling_symlink": [str(tmp / "dangling")],
        "out_under_a_file": [str(tmp / "a_file" / "out")],
        "out_read_only": [str(tmp / "ro" / "out")],
        "out_name_too_long": [str(tmp / ("n" * 300))],
        "keep_is_a_file": [str(tmp / "out"), "--keep-intermediates", str(tmp / "a_file")],
        "keep_is_out_dir": [str(tmp / "out"), "--keep-intermediates", str(tmp / "out")],
        "keep_inside_out_dir": [str(tmp / "out"), "--keep-intermediates", str(tmp / "out/k")],
    }


OUT_VARIANTS = [
    "out_dangling_symlink",
    "out_under_a_file",
    "out_read_only",
    "out_name_too_long",
    "keep_is_a_file",
    "keep_is_out_dir",
    "keep_inside_out_dir",
]


def _two_stages(models: dict[str, Path]) -> str:
    first = f"name: first\n{linear(models['base'], models['a'])}"
    return first + "---\n" + linear("first", models["a"])


@pytest.mark.parametrize("variant", OUT_VARIANTS)
def test_refusals_of_the_output_place_are_one_line(models, tmp_path, capsys, variant):
    if variant == "out_read_only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    args = _out_cases(tmp_path)[variant]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_two_stages(models))
    run_cli(tmp_path, ["merge", str(recipe), args[0], "--no-progress", *args[1:]], capsys)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".partial", ".stages"))]


def test_a_full_disk_mid_merge_is_one_line_and_leaves_nothing(
    models, tmp_path, capsys, monkeypatch
):
    def full(self: object, name: str, tensor: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(ShardedWriter, "add", full)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(linear(models["base"], models["a"]))
    argv = ["merge", str(recipe), str(tmp_path / "out"), "--no-progress"]
    assert "No space left on device" in run_cli(tmp_path, argv, capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["r.yaml"]


def test_a_long_but_valid_out_dir_name_merges(models, tmp_path):
    out = tmp_path / ("n" * 250)  # the staging directory's name must still fit NAME_MAX
    assert merge_to_disk(load_recipe(linear(models["base"], models["a"])), out).is_dir()


RECIPE_FILES: dict[str, Callable[[Path, dict[str, Path]], str]] = {
    "not_utf8": lambda p, m: _write(p, b"merge_method: linear\nmodels: [\xff\xfe]\n"),
    "tilde_user": lambda p, m: _write(p, linear("~no_such_user_evomerge/x", m["a"]).encode()),
    "nul_in_path": lambda p, m: _write(p, linear("a\\0b", m["a"]).replace("'", '"').encode()),
    "a_directory": lambda p, m: str(p.parent),
    "a_fifo": lambda p, m: (os.mkfifo(p), str(p))[1],
}


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("variant", sorted(RECIPE_FILES))
def test_unreadable_recipes_and_references_are_one_line(models, tmp_path, capsys, variant):
    recipe = RECIPE_FILES[variant](tmp_path / "r.yaml", models)
    err = run_cli(tmp_path, ["merge", recipe, str(tmp_path / "out")], capsys)
    if variant in ("a_directory", "a_fifo"):
        assert "not a regular file" in err


INDEXES = {
    "weight_map_list": {"weight_map": ["model.safetensors"]},
    "root_list": [{"weight_map": {}}],
    "shard_not_a_string": {"weight_map": {"x": 3}},
    "not_json": "{not json",
}


@pytest.mark.parametrize("variant", sorted(INDEXES))
def test_malformed_indexes_are_one_line(models, tmp_path, capsys, variant):
    evil = copy_model(models["a"], tmp_path / "evil")
    data = INDEXES[variant]
    text = data if isinstance(data, str) else json.dumps(data)
    (evil / "model.safetensors.index.json").write_text(text)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(linear(models["base"], evil))
    err = run_cli(tmp_path, ["merge", str(recipe), str(tmp_path / "out")], capsys)
    assert "model.safetensors.index.json" in err


def test_eval_accepts_the_allow_pickle_it_suggests(models, tmp_path, capsys):
    pickled = copy_model(models["a"], tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(linear(models["base"], pickled))
    argv = ["eval", f"model={recipe}", "task=toy_mgsm_ja"]
    assert main(argv) == 2
    assert "--allow-pickle" in capsys.readouterr().err.splitlines()[-1]
    # accepted: the merge now reads the pickle (as plain tensors) and fails on its content
    assert main([*argv, "--allow-pickle"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "--allow-pickle" not in err and "config.json says 2 layers" in err


# --- 4. strict parsing: duplicates, the same model twice, shapes against the config -------


def test_duplicates_and_inconsistent_checkpoints_are_errors(models, tmp_path):
    a, base = models["a"], models["base"]
    with pytest.raises(RecipeError, match=r"models\[0\].model: duplicate key at line 4"):
        load_recipe("merge_method: linear\nmodels:\n  - model: x\n    model: y\n")
    with pytest.raises(RecipeError, match=r"models\[1\].model: .* is the model of models\[0\]"):
        check_recipe(load_recipe(linear(a, f"{a}/.")))
    path = (
        f"merge_method: linear\nslices:\n  - sources:\n      - {{model: {a}, layer_range: [0, 1]}}"
        f"\n      - {{model: {a}, layer_range: [1, 2]}}\n"
    )
    with pytest.raises(RecipeError, match=r"slices\[0\].sources\[1\].model"):
        check_recipe(load_recipe(path))
    alias = tmp_path / "alias"
    alias.symlink_to(a)
    with pytest.raises(RecipeError, match=r"models\[1\].model"):  # same directory, other name
        merge_to_disk(load_recipe(linear(a, alias)), tmp_path / "out")
    # the base listed among the models is mergekit's layout, and stays valid
    check_recipe(load_recipe(f"merge_method: ties\nbase_model: {base}\n" + linear(base, a)[21:]))
    bad = copy_model(a, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["vocab_size"] += 1
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match=r"config\.json gives"):
        merge_to_disk(load_recipe(linear(base, bad)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- 5. nothing left behind ------------------------------------------------------------------


def test_stale_staging_directories_are_removed_and_live_ones_kept(models, tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.dead1234.partial"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")  # its merge was killed: no lock
    (stale / MARKER).write_bytes(MARKER_TEXT)  # a merge's, not a user's
    unmarked = tmp_path / ".out.killedbeforemarking.partial"  # empty: a merge's, killed early
    unmarked.mkdir()
    users = tmp_path / ".out.mine.partial"  # named alike, but without the marker: not ours
    users.mkdir()
    (users / "notes.txt").write_text("my own files")
    live = tmp_path / ".out.live5678.partial"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)  # another open file: another owner
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert sorted(remove_stale(tmp_path, "out")) == [stale, unmarked]
        merge_to_disk(load_recipe(linear(models["base"], models["a"])), out)
        assert live.exists() and not stale.exists()
    finally:
        os.close(fd)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert left == sorted([live.name, users.name]) and (users / "notes.txt").exists()
    assert not (out / MARKER).exists()


def test_a_result_is_fsynced_and_never_replaces_a_racing_one(models, tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    out = tmp_path / "out"
    staging = Staging(out)
    raced = "created by another process while this merge ran"
    with pytest.raises(MergeError, match=raced), staging as tmp:
        (tmp / "model.safetensors").write_bytes(b"ours")
        out.mkdir()
        (out / "theirs").write_text("a complete model")
        staging.commit()
    assert sorted(p.name for p in out.iterdir()) == ["theirs"] and synced
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_every_error_is_an_evomerge_error_with_a_short_message(models, tmp_path):
    for text in ("merge_method: [" + "1," * 100_000 + "]\n", "models: {a: 1}\n" * 3):
        with pytest.raises(EvomergeError) as info:
            load_stages(text)
        assert len(str(info.value)) < 600
