"""`python -m evomerge merge`: success, and bad input -> one clear message, exit 2, no OUT_DIR."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.__main__ import main
from evomerge_dev.testing import make_tiny_llama


def _ties(base: Path, *models: Path, density: float = 0.5) -> str:
    entries = "".join(
        f"  - {{model: {m}, parameters: {{weight: 0.5, density: {density}}}}}\n" for m in models
    )
    return f"merge_method: ties\nbase_model: {base}\nmodels:\n{entries}"


def _run(tmp_path: Path, recipe: str, *flags: str) -> tuple[int, Path]:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    out = tmp_path / "out"
    return main(["merge", str(path), str(out), "--no-progress", *flags]), out


def _rewrite(directory: Path, edit: dict[str, torch.Tensor | None]) -> None:
    file = directory / "model.safetensors"
    tensors = load_file(file)
    for name, value in edit.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    save_file(tensors, str(file))


def test_merge_command_writes_a_checkpoint(family: dict[str, Path], tmp_path: Path) -> None:
    code, out = _run(
        tmp_path, _ties(family["base"], family["a"], family["b"]), "--shard-size", "30KB"
    )
    assert code == 0
    assert (out / "model.safetensors.index.json").is_file() and (out / "config.json").is_file()


def _missing_tensor(family: dict[str, Path], tmp: Path) -> tuple[str, str]:
    broken = make_tiny_llama(tmp / "broken", seed=9, base=family["base"])
    _rewrite(broken, {"model.layers.1.mlp.up_proj.weight": None})
    return (
        _ties(family["base"], family["a"], broken),
        f"model '{broken}' has no tensor model.layers.1.mlp.up_proj.weight",
    )


def _shape_mismatch(family: dict[str, Path], tmp: Path) -> tuple[str, str]:
    odd = make_tiny_llama(tmp / "odd", seed=9, base=family["base"])
    _rewrite(odd, {"model.layers.0.mlp.up_proj.weight": torch.zeros(60, 32)})
    return (
        _ties(family["base"], family["a"], odd),
        f"model '{odd}': tensor model.layers.0.mlp.up_proj.weight has shape [60, 32] but "
        "config.json gives [64, 32]",
    )


def _incompatible(family: dict[str, Path], tmp: Path) -> tuple[str, str]:
    wide = make_tiny_llama(tmp / "wide", seed=9, hidden_size=48)
    return _ties(family["base"], family["a"], wide), "incompatible architectures: hidden_size is 32"


def _unsupported(family: dict[str, Path], tmp: Path) -> tuple[str, str]:
    other = make_tiny_llama(tmp / "gpt", seed=9)
    config = json.loads((other / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (other / "config.json").write_text(json.dumps(config))
    return (
        _ties(family["base"], other),
        "architecture 'gpt2' (['GPT2LMHeadModel']) is not supported; supported model types: llama, mistral, qwen2, gemma",
    )


def _pickle_only(family: dict[str, Path], tmp: Path) -> tuple[str, str]:
    pickled = make_tiny_llama(tmp / "pickled", seed=9, base=family["base"])
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    return _ties(family["base"], pickled), "only pickle checkpoints (pytorch_model.bin) found"


def _truncated(family: dict[str, Path], tmp: Path) -> tuple[str, str]:
    cut = make_tiny_llama(tmp / "cut", seed=9, base=family["base"])
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) - 1000])
    return _ties(
        family["base"], family["a"], cut
    ), "model.safetensors: not a readable safetensors file (truncated: tensor"


BAD_INPUTS = {
    "malformed_yaml": lambda f, t: ("merge_method: ties\nmodels: [", "malformed YAML"),
    "unknown_method": lambda f, t: (
        f"merge_method: frankenmerge\nmodels: [{{model: {f['a']}}}]",
        "unknown merge method 'frankenmerge'; valid methods: arcee_fusion, breadcrumbs,",
    ),
    "missing_model": lambda f, t: (
        _ties(f["base"], t / "nowhere"),
        f"model '{t / 'nowhere'}': no such directory",
    ),
    "missing_tensor": _missing_tensor,
    "shape_mismatch": _shape_mismatch,
    "layer_range_out_of_bounds": lambda f, t: (
        f"merge_method: passthrough\nslices: [{{sources: [{{model: {f['a']}, layer_range: [1, 9]}}]}}]",
        f"slices[0].sources[0].layer_range: [1, 9] is out of bounds; model '{f['a']}' has 3 layers",
    ),
    "density_out_of_range": lambda f, t: (
        _ties(f["base"], f["a"], density=1.7),
        "models[0].parameters.density: must be in [0.0, 1.0], got 1.7",
    ),
    "base_model_missing": lambda f, t: (
        f"merge_method: dare_ties\nmodels: [{{model: {f['a']}, parameters: {{weight: 1}}}}]",
        "base_model: dare_ties needs a base model; add `base_model: <model>`",
    ),
    "nuslerp_three_models": lambda f, t: (
        f"merge_method: nuslerp\nmodels: [{{model: {f['a']}, parameters: {{weight: 1}}}}, "
        f"{{model: {f['b']}, parameters: {{weight: 1}}}}, {{model: {f['c']}, parameters: {{weight: 1}}}}]",
        "models: nuslerp takes exactly 2 model(s), got 3",
    ),
    "nuslerp_base_outside_slice": lambda f, t: (
        f"merge_method: nuslerp\nbase_model: {f['base']}\nparameters: {{weight: 1}}\n"
        f"slices: [{{sources: [{{model: {f['a']}, layer_range: [0, 3]}}, "
        f"{{model: {f['b']}, layer_range: [0, 3]}}]}}]",
        f"slices[0].sources: the base model '{f['base']}' must be one of the slice's sources",
    ),
    "nearswap_without_base": lambda f, t: (
        f"merge_method: nearswap\nparameters: {{t: 0.01}}\nmodels: [{{model: {f['a']}}}]",
        "base_model: nearswap needs a base model; add `base_model: <model>`",
    ),
    "nearswap_negative_t": lambda f, t: (
        f"merge_method: nearswap\nbase_model: {f['base']}\nparameters: {{t: -0.5}}\n"
        f"models: [{{model: {f['a']}}}]",
        "parameters.t: must be >= 0.0, got -0.5",
    ),
    "arcee_fusion_two_models": lambda f, t: (
        f"merge_method: arcee_fusion\nbase_model: {f['base']}\n"
        f"models: [{{model: {f['a']}}}, {{model: {f['b']}}}]",
        "models: arcee_fusion takes exactly 1 model(s) besides the base, got 2",
    ),
    "della_epsilon_out_of_range": lambda f, t: (
        f"merge_method: della\nbase_model: {f['base']}\n"
        f"models: [{{model: {f['a']}, parameters: {{weight: 1, density: 0.5, epsilon: 0.7}}}}]",
        "models[0].parameters.epsilon: must be in [0.0, 0.5], got 0.7",
    ),
    "della_density_minus_epsilon": lambda f, t: (
        f"merge_method: della_linear\nbase_model: {f['base']}\n"
        f"models: [{{model: {f['a']}, parameters: {{weight: 1, density: [0.5, 0.1]}}}}]",
        "models[0].parameters: density - epsilon > 0 and density + epsilon < 1 must hold when "
        "0 < density < 1, got density 0.1, epsilon 0.15",
    ),
    "sce_select_topk_out_of_range": lambda f, t: (
        f"merge_method: sce\nbase_model: {f['base']}\nparameters: {{select_topk: 1.5}}\n"
        f"models: [{{model: {f['a']}}}]",
        "parameters.select_topk: must be in [0.0, 1.0], got 1.5",
    ),
    "karcher_fractional_max_iter": lambda f, t: (
        f"merge_method: karcher\nparameters: {{max_iter: 2.5}}\nmodels: [{{model: {f['a']}}}]",
        "parameters.max_iter: must be an integer, got 2.5",
    ),
    "ramplus_negative_r": lambda f, t: (
        f"merge_method: ramplus_tl\nbase_model: {f['base']}\nparameters: {{r: -1}}\n"
        f"models: [{{model: {f['a']}}}]",
        "parameters.r: must be >= 0.0, got -1",
    ),
    "incompatible_architectures": _incompatible,
    "unsupported_architecture": _unsupported,
    "pickle_refused": _pickle_only,
    "truncated_shard_mid_merge": _truncated,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_and_writes_nothing(
    case: str, family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, message = BAD_INPUTS[case](family, tmp_path)
    code, out = _run(tmp_path, recipe)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.startswith("evomerge merge: error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))


def test_allow_pickle_reads_bin_checkpoints(family: dict[str, Path], tmp_path: Path) -> None:
    recipe, _ = _pickle_only(family, tmp_path)
    code, out = _run(tmp_path, recipe, "--allow-pickle")
    assert code == 0 and (out / "model.safetensors").is_file()


def test_existing_out_dir_is_refused(
    family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, out = _run(tmp_path, _ties(family["base"], family["a"]))
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_python_dash_m_evomerge_merge(family: dict[str, Path], tmp_path: Path) -> None:
    """The real entry point, in its own process, with its progress bar."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_ties(family["base"], family["a"], family["b"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "evomerge", "merge", str(recipe), str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "merging" in done.stderr and (tmp_path / "out" / "model.safetensors").is_file()


def test_huge_pages_are_asked_for_and_change_no_byte(tmp_path: Path) -> None:
    """`python -m evomerge` asks torch's allocator for transparent huge pages unless the user
    set THP_MEM_ALLOC_ENABLE; a merge whose tensors are large enough to get them (4 MB
    embeddings) writes the same bytes with and without."""
    import os
    import subprocess
    import sys

    base = make_tiny_llama(
        tmp_path / "base", seed=0, num_layers=1, hidden_size=64, vocab_size=16384
    )
    a = make_tiny_llama(tmp_path / "a", seed=1, base=base, hidden_size=64, vocab_size=16384)
    b = make_tiny_llama(tmp_path / "b", seed=2, base=base, hidden_size=64, vocab_size=16384)
    recipe = tmp_path / "recipe.yaml"
    ties = _ties(base, a, b).removeprefix("merge_method: ties\n")
    recipe.write_text("merge_method: dare_ties\ndrop_scheme: counter\n" + ties)
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env["OMP_NUM_THREADS"] = "1"
    code = "import evomerge.__main__, os; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    for setting, expected in ((None, "1"), ("0", "0")):
        e = env if setting is None else {**env, "THP_MEM_ALLOC_ENABLE": setting}
        seen = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)
        assert seen.stdout.strip() == expected
    outputs = []
    for setting in ("1", "0"):
        out = tmp_path / f"out-{setting}"
        command = [
            sys.executable,
            "-m",
            "evomerge",
            "merge",
            str(recipe),
            str(out),
            "--no-progress",
        ]
        e = {**env, "THP_MEM_ALLOC_ENABLE": setting}
        done = subprocess.run(command, capture_output=True, text=True, env=e, check=False)
        assert done.returncode == 0, done.stderr
        outputs.append((out / "model.safetensors").read_bytes())
    assert outputs[0] == outputs[1]
