"""The pinned build: the recorded bytes on any x86-64 machine with AVX2, and pins that matter."""

import json
import sys
from pathlib import Path

import pytest

from evomerge.errors import ConfigError, UsageError
from evomerge.kernels import (
    PINNED_KERNELS,
    cpu_runs_pinned_kernels,
    environment_is_pinned,
    pinned_environment,
)
from evomerge.toy import ToyFamily, ensure_family, store
from evomerge.toy.build import build_family_pinned
from evomerge.toy.cli import main as toy_main
from evomerge.toy.store import (
    load_shipped,
    reference_hashes,
    ship_family,
    verify_build,
    weight_hashes,
)

needs_avx2 = pytest.mark.skipif(
    not cpu_runs_pinned_kernels(), reason="the pinned kernels need x86-64 with AVX2"
)


def test_pins_set_after_torch_loaded_are_not_taken_for_pins_in_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    import torch

    from evomerge.kernels import pin_for_this_process, pins_in_force

    clean = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    monkeypatch.setattr(os, "environ", dict(clean))
    pin_for_this_process()  # torch has loaded: the choices are made, the environment is left
    assert not environment_is_pinned()
    monkeypatch.setattr(os, "environ", {**clean, **PINNED_KERNELS})
    assert pins_in_force() == (torch.backends.cpu.get_cpu_capability() == "AVX2")


def test_pinned_environment_sets_kernels_and_threads() -> None:
    env = pinned_environment(3, base={"PATH": "/bin", "MKL_CBWR": "COMPATIBLE"})
    assert env["PATH"] == "/bin"
    assert {k: env[k] for k in PINNED_KERNELS} == dict(PINNED_KERNELS)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert environment_is_pinned(env)
    assert not environment_is_pinned({**env, "ATEN_CPU_CAPABILITY": "default"})


@needs_avx2
def test_the_pinned_small_build_has_the_recorded_bytes(small_family: ToyFamily) -> None:
    assert small_family.manifest["kernels"] == {"capability": "AVX2", "pinned": True}
    assert weight_hashes(small_family) == reference_hashes("small")


@needs_avx2
def test_another_kernel_setting_builds_other_bytes(tmp_path: Path) -> None:
    unpinned = {**PINNED_KERNELS, "ATEN_CPU_CAPABILITY": "default"}
    family = build_family_pinned(tmp_path / "f", "small", threads=1, kernels=unpinned)
    assert family.manifest["kernels"]["capability"] == "DEFAULT"
    recorded = reference_hashes("small")
    assert recorded is not None
    rebuilt = weight_hashes(family)
    assert all(rebuilt[name] != recorded[name] for name in recorded)


@needs_avx2
def test_verify_says_whether_the_bytes_are_reproduced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert toy_main(["--verify", "--size", "small", "--threads", "1"]) == 0
    assert "this machine reproduces the recorded toy family (small)" in capsys.readouterr().out
    wrong = {"v4": {"small": {"base": "0" * 64, "math_en": "1" * 64, "lang_ja": "2" * 64}}}
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(wrong))
    monkeypatch.setattr(store, "REFERENCE", reference)
    monkeypatch.setattr(store, "FAMILY_VERSION", 4)
    assert verify_build("small", threads=1, progress=False).reproduced is False
    monkeypatch.setattr(store, "FAMILY_VERSION", 99)
    with pytest.raises(ConfigError, match=r"v99 \(small\): no recorded checksums"):
        verify_build("small", threads=1, progress=False)


def test_a_pinned_build_that_is_refused_says_why_in_one_line(
    small_family: ToyFamily, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        build_family_pinned(small_family.root, "small")
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        build_family_pinned(tmp_path / "x", "small", threads=0)
    with pytest.raises(ConfigError, match="size must be one of"):
        build_family_pinned(tmp_path / "y", "tiny")
    assert not (tmp_path / "y").exists()


def test_a_shipped_family_loads_checked_and_a_changed_file_is_named(
    small_family: ToyFamily, tmp_path: Path
) -> None:
    dest = ship_family(small_family, tmp_path / "shipped")
    files = dest.manifest["files"]
    assert "lang_ja/model.safetensors" in files and "base/config.json" in files
    family = load_shipped("small", root=tmp_path / "shipped")
    assert family is not None and family.probe_scores == small_family.probe_scores
    assert load_shipped("full", root=tmp_path / "shipped") is None  # another size
    assert load_shipped("small", root=tmp_path / "nothing") is None
    weights = tmp_path / "shipped" / "math_en" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"math_en/model\.safetensors has SHA-256 .* not the"):
        load_shipped("small", root=tmp_path / "shipped")
    weights.unlink()
    with pytest.raises(ConfigError, match=r"math_en/model\.safetensors is missing"):
        load_shipped("small", root=tmp_path / "shipped")


def test_ensure_family_prefers_the_shipped_family(
    small_family: ToyFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ship_family(small_family, tmp_path / "shipped")
    monkeypatch.setattr(store, "SHIPPED_ROOT", tmp_path / "shipped")
    monkeypatch.setattr(store, "build_family_pinned", lambda *a, **k: pytest.fail("built"))
    family = ensure_family("small", cache_dir=tmp_path / "empty-cache")
    assert family.root == tmp_path / "shipped"
    assert not (tmp_path / "empty-cache").exists()


def test_a_shipped_family_over_the_size_limit_is_refused(
    small_family: ToyFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "SHIPPED_BYTES_LIMIT", 1000)
    with pytest.raises(ConfigError, match="over the 0 MiB a shipped family may take"):
        ship_family(small_family, tmp_path / "shipped")
    assert list(tmp_path.iterdir()) == []


def test_searches_on_the_toy_start_with_the_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from evomerge import __main__ as cli

    assert cli.runs_on_the_toy("search", []) and cli.runs_on_the_toy("search", ["models=toy"])
    assert not cli.runs_on_the_toy("search", ["models=toy", "models=evollm_jp"])
    assert cli.runs_on_the_toy("eval", ["model=toy:lang_ja", "task=toy_mgsm_ja"])
    assert not cli.runs_on_the_toy("merge", ["recipe.yaml", "out"])
    seen: dict[str, dict[str, str]] = {}

    class Command:
        @staticmethod
        def main(args: list[str]) -> int:
            seen[args[0]] = dict(os.environ)
            return 0

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: Command)
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `python -m evomerge`
    clean = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    for args in (["search", "seed=1"], ["search", "models=evollm_jp"]):
        monkeypatch.setattr(os, "environ", dict(clean))
        assert cli.main(args) == 0
    pinned = {k: seen["seed=1"].get(k) for k in PINNED_KERNELS}
    assert pinned == (dict(PINNED_KERNELS) if cpu_runs_pinned_kernels() else dict.fromkeys(pinned))
    assert not any(k in seen["models=evollm_jp"] for k in PINNED_KERNELS)


def test_draws_change_the_seeds_and_nothing_else(small_family: ToyFamily, tmp_path: Path) -> None:
    from dataclasses import replace

    from evomerge.toy.family import SIZES, family_config

    full = SIZES["full"]
    assert family_config("full") == full
    assert family_config("full", 2) == replace(full, seed=3, data_seed=31)  # v4 research's S3
    with pytest.raises(ConfigError, match=r"draw must be in \[0, 1000\], got -1"):
        family_config("full", -1)
    other = build_family_pinned(tmp_path / "d1", "small", threads=1, draw=1)
    assert other.manifest["draw"] == 1 and other.manifest["config"]["seed"] == 1
    assert small_family.manifest["draw"] == 0
    assert weight_hashes(other)["base"] != weight_hashes(small_family)["base"]
    with pytest.raises(UsageError, match="--draw needs --out"):
        toy_main(["--size", "small", "--draw", "1"])
