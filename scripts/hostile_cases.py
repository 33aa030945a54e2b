"""The hostile inputs of scripts/hostile_inputs.py, by class of issue #20: the fixture
(tiny models and an outside canary, built in a child process so that the runner never imports
torch) and the cases, each a command line and what it must do.

    python scripts/hostile_cases.py ROOT   builds the fixture's models into ROOT
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CANARY = "canary-5e1d7b0c"
MARKER = 4242.0  # every value of the outside shard: found in no real model


@dataclass
class Case:
    name: str
    group: str  # the class
    argv: list[str]
    expect: str = "refuse"  # or "accept": a legitimate input that must keep working
    outside: bool = False  # succeeding means a file outside the model was read
    check: Callable[[Path, str], str | None] | None = None  # (out, stderr) -> a problem


# --- the cases ---------------------------------------------------------------------------


def linear(*refs: object, method: str = "linear", extra: str = "") -> str:
    entries = "".join(f"  - {{model: '{r}', parameters: {{weight: 0.5}}}}\n" for r in refs)
    return f"merge_method: {method}\n{extra}models:\n{entries}"


class Fixture:
    """Tiny models, an outside canary (text and shard), one directory per case."""

    def __init__(self, root: Path):
        self.root = root
        subprocess.run([sys.executable, __file__, str(root)], check=True)
        self.base, self.a, self.big, self.big2 = (root / n for n in ("base", "a", "big", "big2"))
        self.pickled = root / "pickled"
        self.outside = root / "outside"
        self.canary = self.outside / "canary.txt"
        self.shard = self.outside / "evil.safetensors"

    def case_dir(self, name: str) -> Path:
        path = self.root / "cases" / name
        path.mkdir(parents=True)
        return path

    def evil(self, where: Path, edit: Callable[[Path], None]) -> Path:
        model = where / "evil"
        model.mkdir()
        for f in self.a.iterdir():
            (model / f.name).write_bytes(f.read_bytes())
        edit(model)
        return model

    def merge(self, name: str, group: str, recipe: str | bytes, **kw: Any) -> Case:
        where = self.case_dir(name)
        path = where / "r.yaml"
        path.write_bytes(recipe if isinstance(recipe, bytes) else recipe.encode())
        extra = list(kw.pop("flags", []))
        out = str(kw.pop("out", where / "out"))
        return Case(name, group, ["merge", str(path), out, "--no-progress", *extra], **kw)


def build(root: Path) -> None:
    """The models and the outside canary (run in a child process: it imports torch)."""
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
    from evomerge_dev.testing import make_tiny_llama, make_tiny_lora

    base = make_tiny_llama(root / "base", seed=0)
    a = make_tiny_llama(root / "a", seed=1, base=base)
    make_tiny_lora(root / "adapter", base, seed=2)  # a LoRA source: base+adapter
    scalar = root / "scalar_model"  # a with one 0-dim tensor more
    scalar.mkdir()
    for f in a.iterdir():
        (scalar / f.name).write_bytes(f.read_bytes())
    tensors = {**load_file(a / "model.safetensors"), "model.scalar": torch.tensor(1.0)}
    save_file(tensors, scalar / "model.safetensors")
    # big enough that a merge spends seconds writing, so a kill lands mid-write
    big = make_tiny_llama(root / "big", seed=5, num_layers=12, hidden_size=384, shards=4)
    make_tiny_llama(root / "big2", seed=6, num_layers=12, hidden_size=384, base=big)
    outside = root / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text(f"{CANARY}\nroot:x:0:0:root:/root:/bin/bash\n" * 4)
    tensors = load_file(a / "model.safetensors")
    save_file(
        {n: torch.full_like(t, MARKER) for n, t in tensors.items()}, outside / "evil.safetensors"
    )
    pickled = root / "pickled"
    pickled.mkdir()
    for f in a.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")  # plain, but not a model


def _names(model: Path) -> list[str]:
    """Tensor names from the safetensors header (no torch in this process)."""
    with open(model / "model.safetensors", "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return [n for n in json.loads(f.read(length)) if n != "__metadata__"]


def _link(name: str, target: Path) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        (model / name).unlink(missing_ok=True)
        (model / name).symlink_to(target)

    return edit


def _index(shard: Callable[[Path], str]) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        names = _names(model)
        (model / "model.safetensors").unlink()
        index = {"metadata": {}, "weight_map": {n: shard(model) for n in names}}
        (model / "model.safetensors.index.json").write_text(json.dumps(index))

    return edit


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        (model / name).unlink(missing_ok=True)
        (model / name).write_bytes(data if isinstance(data, bytes) else data.encode())

    return edit


def _header(text: bytes, length: int | None = None, pad: int = 0) -> bytes:
    return struct.pack("<Q", len(text) if length is None else length) + text + b"\0" * pad


def _sparse_header(model: Path) -> None:
    with open(model / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", 2**30 - 8))
        f.truncate(2**30)  # 1 GB sparse: the length fits the file


def _laughs(levels: int, width: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def confinement_cases(fx: Fixture) -> list[Case]:
    cases = []
    for name in (
        "tokenizer.json",
        "generation_config.json",
        "tokenizer_config.json",
        "config.json",
        "vocab.json",
        "special_tokens_map.json",
    ):
        where = fx.case_dir(f"link_{name}")
        evil = fx.evil(where, _link(name, fx.canary))
        (where / "r.yaml").write_text(linear(evil, fx.a, extra=f"base_model: {evil}\n"))
        argv = ["merge", str(where / "r.yaml"), str(where / "out"), "--no-progress"]
        cases.append(Case(f"link_{name}", "confinement", argv, outside=True))
    edits: dict[str, Callable[[Path], None]] = {
        "shard_link": _link("model.safetensors", fx.shard),
        "index_absolute_shard": _index(lambda m: str(fx.shard)),
        "index_dotdot_shard": _index(lambda m: os.path.relpath(fx.shard, m)),
        "index_absolute_text": _index(lambda m: str(fx.canary)),
        "index_subdir_link": lambda m: (
            (m / "sub").symlink_to(fx.outside),
            _index(lambda _: "sub/evil.safetensors")(m),
        )[0],
        "dangling_tokenizer_link": _link("tokenizer.json", fx.root / "nowhere"),
        "tokenizer_link_to_dev_zero": _link("tokenizer.json", Path("/dev/zero")),
        "fifo_tokenizer": lambda m: (
            (m / "tokenizer.json").unlink(),
            os.mkfifo(m / "tokenizer.json"),
        )[0],
        "config_link_loop": lambda m: (
            (m / "config.json").unlink(),
            (m / "config.json").symlink_to("config.json"),
        )[0],
    }
    for name, edit in edits.items():
        where = fx.case_dir(name)
        evil = fx.evil(where, edit)
        (where / "r.yaml").write_text(linear(evil, fx.a, extra=f"base_model: {evil}\n"))
        argv = ["merge", str(where / "r.yaml"), str(where / "out"), "--no-progress"]
        cases.append(Case(name, "confinement", argv, outside=True))
    # the Hugging Face cache layout: links into the repository's blobs/ must keep working
    hub = fx.root / "hub" / "models--org--tiny"
    snapshot = hub / "snapshots" / "0123abc"
    (hub / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(fx.a.iterdir())):
        (hub / "blobs" / f"b{i}").write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(f"../../blobs/b{i}")
    cases.append(
        fx.merge("hf_cache_layout", "confinement", linear(snapshot, fx.base), expect="accept")
    )
    escaped = fx.root / "hub2" / "models--org--evil" / "snapshots" / "0123abc"
    escaped.mkdir(parents=True)
    for f in sorted(fx.a.iterdir()):
        (escaped / f.name).symlink_to(f)  # blobs outside the repository root
    cases.append(
        fx.merge(
            "hf_cache_link_outside_repo", "confinement", linear(escaped, fx.base), outside=True
        )
    )
    for name, edit in (
        ("eval_dir_link", _link("tokenizer.json", fx.canary)),
        ("eval_dir_index_absolute", _index(lambda m: str(fx.shard))),
    ):
        where = fx.case_dir(name)
        evil = fx.evil(where, edit)
        cases.append(
            Case(
                name,
                "confinement",
                ["eval", f"model={evil}", "task=toy_mgsm_ja", "limit=1"],
                outside=True,
            )
        )
    return cases


def resource_cases(fx: Fixture) -> list[Case]:
    bomb = (
        "a: &a [x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n"
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
        + "merge_method: *h\n"
    )
    recipes: dict[str, str | bytes] = {
        "alias_bomb_534_bytes": bomb,
        "billion_laughs_in_a_value": linear(fx.base, fx.a)
        + _laughs(9).replace("l8: &l8", "random_seed:"),
        "recursive_alias": "merge_method: linear\nmodels: &m [*m]\n",
        "deep_flow_nesting": "merge_method: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "deep_block_nesting": "".join("  " * i + f"k{i}:\n" for i in range(200)),
        "recipe_2MB": linear(fx.base, fx.a) + "#" + "x" * 2_000_000 + "\n",
        "recipe_50MB": linear(fx.base, fx.a) + ("#" + "x" * 99 + "\n") * 500_000,
        "long_string_value": "merge_method: '" + "m" * 900_000 + "'\n",
        "long_key": linear(fx.base, fx.a) + "k" * 900_000 + ": 1\n",
        "huge_integer_value": linear(fx.base, fx.a, extra="random_seed: " + "9" * 900_000 + "\n"),
        "karcher_unbounded": linear(
            fx.base, fx.a, method="karcher", extra="parameters: {max_iter: 1000000000, tol: 0}\n"
        ),
        "karcher_float_iters": linear(
            fx.base, fx.a, method="karcher", extra="parameters: {max_iter: 1e9, tol: 0}\n"
        ),
        "stage_bomb": f"name: s1\n{linear(fx.base, fx.a)}---\n{bomb}",
    }
    cases = [fx.merge(n, "resources", r) for n, r in recipes.items()]
    # 200,000 empty documents after one recipe: within the bounds, so it merges, in seconds
    many = "name: s\n" + linear(fx.base, fx.a) + "---\n" * 200_000
    cases.append(fx.merge("many_empty_documents", "resources", many, expect="accept"))
    for name, edit in (
        ("header_1GB_sparse", _sparse_header),
        ("header_length_past_end", _write("model.safetensors", _header(b"{}", 10**6))),
        ("header_deep_json", _write("model.safetensors", _header(b"[" * 200_000))),
    ):
        where = fx.case_dir(name)
        evil = fx.evil(where, edit)
        (where / "r.yaml").write_text(linear(fx.base, evil))
        cases.append(
            Case(
                name,
                "resources",
                ["merge", str(where / "r.yaml"), str(where / "out"), "--no-progress"],
            )
        )
    where = fx.case_dir("eval_recipe_bomb")
    (where / "r.yaml").write_text(bomb)
    cases.append(
        Case(
            "eval_recipe_bomb",
            "resources",
            ["eval", f"model={where / 'r.yaml'}", "task=toy_mgsm_ja"],
        )
    )
    where = fx.case_dir("eval_task_include_bomb")
    (where / "tasks").mkdir()
    (where / "tasks" / "evil.yaml").write_text(_laughs(10))
    cases.append(
        Case(
            "eval_task_include_bomb",
            "resources",
            ["eval", f"model={fx.a}", "task=toy_mgsm_ja", f"include=[{where / 'tasks'}]"],
        )
    )
    return cases


def _entry(shape: str, offsets: str = "[0, 16]", dtype: str = '"F32"') -> bytes:
    text = f'{{"model.norm.weight": {{"dtype": {dtype}, "shape": {shape}, "data_offsets": {offsets}}}}}'
    return _header(text.encode(), pad=16)


def traceback_cases(fx: Fixture) -> list[Case]:
    two = linear(fx.base, fx.a)
    stages = f"name: first\n{two}---\n" + linear("first", fx.a)
    cases = [
        fx.merge(
            "recipe_not_utf8", "tracebacks", b"merge_method: linear\nmodels: [\xff\xfe\x80]\n"
        ),
        fx.merge("recipe_latin1_comment", "tracebacks", two.encode() + b"# caf\xe9\n"),
        fx.merge("tilde_user_path", "tracebacks", linear("~no_such_user_x/m", fx.a)),
        fx.merge(
            "nul_in_path", "tracebacks", linear(fx.base, fx.a).replace(f"'{fx.a}'", '"a\\0b"')
        ),
        fx.merge("model_path_too_long", "tracebacks", linear("/" + "p" * 5000, fx.a)),
        fx.merge("bad_tag", "tracebacks", "merge_method: !!python/object:os.system ls\n"),
        fx.merge("binary_tag", "tracebacks", "merge_method: !!binary aGVsbG8=\nmodels: [a]\n"),
    ]
    headers = {
        "shape_negative": _entry("[-1, -4]"),
        "shape_1e400": _entry("[1e400]"),
        "offset_negative": _entry("[4]", "[-16, 0]"),
        "offset_1e400": _entry("[4]", "[0, 1e400]"),
        "shape_huge_int": _entry("[" + "9" * 5000 + "]"),
        "dtype_list": _entry("[4]", dtype='["F32"]'),
        "entry_not_a_mapping": _header(b'{"model.norm.weight": 5}'),
        "header_a_list": _header(b"[1, 2]"),
        "header_not_utf8": _header(b'{"\xff": 1}'),
        "file_shorter_than_8_bytes": b"\x01\x02",
    }
    for name, data in headers.items():
        where = fx.case_dir(name)
        evil = fx.evil(where, _write("model.safetensors", data))
        (where / "r.yaml").write_text(linear(fx.base, evil))
        cases.append(
            Case(
                name,
                "tracebacks",
                ["merge", str(where / "r.yaml"), str(where / "out"), "--no-progress"],
            )
        )
    indexes = {
        "index_weight_map_list": '{"weight_map": ["model.safetensors"]}',
        "index_root_list": '[{"weight_map": {}}]',
        "index_shard_number": '{"weight_map": {"x": 7}}',
        "index_not_json": "{oops",
        "index_deep": "[" * 100_000,
        "config_a_list": None,
    }
    for name, text in indexes.items():
        where = fx.case_dir(name)
        if text is None:
            evil = fx.evil(where, _write("config.json", "[1, 2, 3]"))
        else:
            evil = fx.evil(where, _write("model.safetensors.index.json", text))
        (where / "r.yaml").write_text(linear(fx.base, evil))
        cases.append(
            Case(
                name,
                "tracebacks",
                ["merge", str(where / "r.yaml"), str(where / "out"), "--no-progress"],
            )
        )
    where = fx.case_dir("out_places")
    (where / "a_file").write_text("x")
    (where / "dangling").symlink_to(where / "nowhere")
    (where / "r.yaml").write_text(stages)
    outs = {
        "out_dangling_symlink": [str(where / "dangling")],
        "out_under_a_file": [str(where / "a_file" / "out")],
        "out_name_300_chars": [str(where / ("n" * 300))],
        "out_existing_file": [str(where / "a_file")],
        "keep_intermediates_a_file": [
            str(where / "o1"),
            "--keep-intermediates",
            str(where / "a_file"),
        ],
        "keep_intermediates_out_dir": [
            str(where / "o2"),
            "--keep-intermediates",
            str(where / "o2"),
        ],
        "keep_intermediates_inside_out": [
            str(where / "o3"),
            "--keep-intermediates",
            str(where / "o3" / "k"),
        ],
        "recipe_is_a_directory": [],
    }
    for name, args in outs.items():
        recipe = str(where) if name == "recipe_is_a_directory" else str(where / "r.yaml")
        argv = ["merge", recipe, *(args[:1] or [str(where / "o4")]), "--no-progress", *args[1:]]
        cases.append(Case(name, "tracebacks", argv))
    cases.append(
        fx.merge(
            "out_name_250_chars",
            "tracebacks",
            two,
            out=fx.case_dir("long") / ("n" * 250),
            expect="accept",
        )
    )
    recipe = fx.case_dir("eval_allow_pickle") / "r.yaml"
    recipe.write_text(linear(fx.base, fx.pickled))

    def accepted(out: Path, err: str) -> str | None:
        return "--allow-pickle was not accepted" if "allow" in err.splitlines()[-1] else None

    argv = ["eval", f"model={recipe}", "task=toy_mgsm_ja", "--allow-pickle"]
    cases.append(Case("eval_allow_pickle", "tracebacks", argv, check=accepted))
    return cases


def strict_cases(fx: Fixture) -> list[Case]:
    alias = fx.root / "a_alias"
    alias.symlink_to(fx.a)
    where = fx.case_dir("config_vocab_mismatch_model")
    bad = fx.evil(
        where,
        lambda m: (m / "config.json").write_text(
            json.dumps({**json.loads((fx.a / "config.json").read_text()), "vocab_size": 65})
        ),
    )
    slice_twice = (
        f"merge_method: linear\nslices:\n  - sources:\n      - {{model: {fx.a}, layer_range: [0, 1], parameters: {{weight: 1}}}}"
        f"\n      - {{model: {fx.a}, layer_range: [1, 2], parameters: {{weight: 1}}}}\n"
    )
    where = fx.case_dir("float_shape_model")
    header = b'{"model.norm.weight": {"dtype": "F32", "shape": [8.9], "data_offsets": [0, 32]}}'
    floaty = fx.evil(where, _write("model.safetensors", _header(header, pad=32)))
    return [
        fx.merge("duplicate_top_key", "strict", linear(fx.base, fx.a) + "merge_method: ties\n"),
        fx.merge(
            "duplicate_nested_key",
            "strict",
            linear(fx.base, fx.a).replace("weight: 0.5}", "weight: 0.5, weight: 0.9}", 1),
        ),
        fx.merge("same_model_twice", "strict", linear(fx.a, fx.a)),
        fx.merge("same_model_other_spelling", "strict", linear(fx.a, f"{fx.a}/")),
        fx.merge("same_model_through_a_link", "strict", linear(fx.a, alias)),
        fx.merge("same_source_twice_in_a_slice", "strict", slice_twice),
        fx.merge(
            "base_listed_among_models",
            "strict",
            linear(fx.base, fx.a, method="ties", extra=f"base_model: {fx.base}\n").replace(
                "weight: 0.5}", "weight: 0.5, density: 0.5}"
            ),
            expect="accept",
        ),
        fx.merge("shape_disagrees_with_config", "strict", linear(fx.base, bad)),
        fx.merge("float_shape_in_header", "strict", linear(fx.base, floaty)),
    ]


if __name__ == "__main__":
    build(Path(sys.argv[1]))
