"""Every count, depth and size that comes from a model's files or a recipe is bounded before
it is used, and a non-finite output is an error naming the tensor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import MergeError, RecipeError
from evomerge.merge import check_recipe, merge_to_disk
from evomerge.merge.io import ShardedWriter
from evomerge.merge.lora import _nested_repeat
from evomerge.merge.multistage import MAX_STAGES, load_stages
from evomerge.model_ref import MAX_LAYERS
from evomerge.recipe import load_recipe


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def linear(*refs: object, extra: str = "", method: str = "linear") -> str:
    entries = "".join(f"  - {{model: '{r}', parameters: {{weight: 0.5}}}}\n" for r in refs)
    return f"merge_method: {method}\n{extra}models:\n{entries}"


def _edit_config(model: Path, **changes: object) -> None:
    config = json.loads((model / "config.json").read_text()) | changes
    (model / "config.json").write_text(json.dumps(config))


def test_a_billion_layers_in_config_is_refused(family: dict[str, Path], tmp_path: Path) -> None:
    evil = copy_model(family["a"], tmp_path / "evil")
    _edit_config(evil, num_hidden_layers=10**9)
    with pytest.raises(MergeError, match=f"num_hidden_layers is 1000000000, over {MAX_LAYERS}"):
        merge_to_disk(load_recipe(linear(family["base"], evil)), tmp_path / "out")


def test_a_deep_config_is_refused_before_anything_is_written(
    family: dict[str, Path], tmp_path: Path
) -> None:
    evil = copy_model(family["a"], tmp_path / "evil")
    config = json.loads((evil / "config.json").read_text())
    deep: object = 1
    for _ in range(900):
        deep = {"x": deep}
    (evil / "config.json").write_text(json.dumps({**config, "extra": deep}))
    with pytest.raises(MergeError, match="nested deeper than 64 levels"):
        merge_to_disk(load_recipe(linear(evil, family["base"])), tmp_path / "deep" / "out")
    assert not (tmp_path / "deep").exists()


def test_pad_to_multiple_of_is_bounded(family: dict[str, Path]) -> None:
    text = linear(family["a"], family["b"], extra="tokenizer: {pad_to_multiple_of: 1000000000}\n")
    with pytest.raises(RecipeError, match=r"pad_to_multiple_of: must be an integer in \[1, 4096\]"):
        load_recipe(text)


def test_a_long_stage_chain_written_final_first_is_refused_in_one_line(
    family: dict[str, Path],
) -> None:
    n = 1500
    docs = [linear(f"s{n - 1}", family["a"])]
    docs += [
        f"name: s{i}\n" + linear(f"s{i - 1}" if i else family["b"], family["a"]) for i in range(n)
    ]
    with pytest.raises(RecipeError, match=f"1501 recipe documents .*over {MAX_STAGES}"):
        load_stages("---\n".join(docs))
    # within the bound, the deepest chain is ordered without trouble
    docs = [linear(f"s{MAX_STAGES - 2}", family["a"])]
    docs += [
        f"name: s{i}\n" + linear(f"s{i - 1}" if i else family["b"], family["a"])
        for i in range(MAX_STAGES - 1)
    ]
    assert len(load_stages("---\n".join(docs))) == MAX_STAGES


def test_slices_repeated_by_an_alias_are_bounded(family: dict[str, Path]) -> None:
    one = f"&s {{sources: [{{model: '{family['a']}', layer_range: [0, 3]}}]}}"
    text = f"merge_method: passthrough\nslices:\n  - {one}\n" + "  - *s\n" * 1000
    with pytest.raises(RecipeError, match=f"slices: 3003 output layers, over {MAX_LAYERS}"):
        check_recipe(load_recipe(text))


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        ("(a+)+", True),
        ("(a|aa)*", True),
        ("(.|.)*j.", True),
        ("((a*)b){2,}", True),
        ("layers\\.1\\.self_attn\\.q_proj", False),
        ("(q|v)_proj", False),
        ("(layers\\.\\d+\\.)?q_proj", False),
        ("[(]+x", False),
    ],
)
def test_nested_repeats_in_adapter_patterns_are_found(pattern: str, refused: bool) -> None:
    assert (_nested_repeat(pattern) is not None) is refused


def test_a_backtracking_adapter_pattern_is_refused_quickly(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from evomerge_dev.testing import make_tiny_llama, make_tiny_lora

    base = make_tiny_llama(tmp_path / "base", seed=0)
    adapter = make_tiny_lora(tmp_path / "ad", base, seed=1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    for pattern, message in [
        ("(.|.)*j.", "can backtrack catastrophically"),
        ("x" * 1001, "at most 1000 characters"),
        ("(unclosed", "is not valid"),
    ]:
        config["rank_pattern"] = {pattern: 2}
        (adapter / "adapter_config.json").write_text(json.dumps(config))
        start = time.monotonic()
        with pytest.raises(MergeError, match=f"rank_pattern: .*{message}"):
            merge_to_disk(load_recipe(linear(f"{base}+{adapter}")), tmp_path / "out")
        assert time.monotonic() - start < 30
    config["rank_pattern"], config["lora_alpha"] = {}, 1e308
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match=r"(produced NaN|holds inf or NaN)"):
        merge_to_disk(load_recipe(linear(f"{base}+{adapter}")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_scalar_tensor_is_refused_by_name(family: dict[str, Path], tmp_path: Path) -> None:
    evil = copy_model(family["a"], tmp_path / "evil")
    tensors = load_file(evil / "model.safetensors")
    save_file({**tensors, "model.scalar": torch.tensor(1.0)}, evil / "model.safetensors")
    text = linear(evil, family["c"], method="della", extra=f"base_model: '{family['base']}'\n")
    text = text.replace("weight: 0.5}", "weight: 0.5, density: 0.5, epsilon: 0.1}")
    with pytest.raises(MergeError, match=r"tensor 'model\.scalar' is a scalar"):
        merge_to_disk(load_recipe(text), tmp_path / "out")


@pytest.mark.parametrize(
    ("method", "extra", "weight"),
    [
        ("task_arithmetic", "parameters: {lambda: 1.0e308}\n", "0.5"),
        ("linear", "parameters: {normalize: false}\n", "1.0e308"),
    ],
)
def test_an_overflowing_parameter_is_an_error_naming_the_tensor(
    family: dict[str, Path], tmp_path: Path, method: str, extra: str, weight: str
) -> None:
    base = f"base_model: '{family['base']}'\n" if method != "linear" else ""
    text = linear(family["a"], family["c"], method=method, extra=base + extra)
    text = text.replace("weight: 0.5}", f"weight: {weight}}}")
    named = r"(model\.\S+: the merged tensor holds inf or NaN|model\.\S+ with \w+ produced NaN)"
    with pytest.raises(MergeError, match=named):
        merge_to_disk(load_recipe(text), tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()  # the parent it made is gone too


def test_the_writer_refuses_non_finite_tensors(tmp_path: Path) -> None:
    layout = [("w", (2,), torch.float16)]
    writer = ShardedWriter(tmp_path, 10**6, layout)
    with pytest.raises(MergeError, match="w: the merged tensor holds inf"):
        writer.add("w", torch.tensor([1.0, float("inf")], dtype=torch.float16))
    big = ShardedWriter(tmp_path / "x", 10**6, [("ok", (3,), torch.float16)])
    assert big.total_size == 6  # finite sums of float16 past 65504 are not mistaken for inf
    (tmp_path / "x").mkdir()
    big.add("ok", torch.tensor([60000.0, 60000.0, 60000.0], dtype=torch.float16))
