from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import ConfigError
from evomerge.toy import (
    FAMILY_VERSION,
    SIZES,
    ToyFamily,
    build,
    build_family,
    ensure_family,
    load_family,
)
from evomerge.toy.cli import main as toy_main
from evomerge.toy.probe import score
from evomerge.toy.tasks import task_examples


def test_family_layout_and_names(small_family: ToyFamily) -> None:
    assert small_family.names == ["base", "math_en", "lang_ja"]
    assert small_family.root.name == f"toy-v{FAMILY_VERSION}-small"
    for name in small_family.names:
        d = small_family.path(name)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (d / f).is_file(), f"{name}/{f}"
    assert set(small_family.specialists) == {"math_en", "lang_ja"}


def test_models_load_offline_and_reproduce_their_probe_scores(small_family: ToyFamily) -> None:
    path = small_family.path("lang_ja")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    AutoTokenizer.from_pretrained(path, local_files_only=True)
    got = score(model, task_examples("toy_lang_ja")).acc
    assert got == small_family.probe_scores["lang_ja"]["toy_lang_ja"]


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    once = build_family(tmp_path / "once", "small", threads=1)
    again = build_family(tmp_path / "again", "small", threads=1)
    small_family = once
    for name in small_family.names:
        a = (small_family.path(name) / "model.safetensors").read_bytes()
        b = (again.path(name) / "model.safetensors").read_bytes()
        assert a == b, name


def test_a_build_uses_the_sizes_thread_count_unless_told(
    small_family: ToyFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = SIZES["small"]
    monkeypatch.setitem(SIZES, "small", replace(small, threads=2))
    seen: list[int] = []
    monkeypatch.setattr(build, "_train_all", lambda *a: seen.append(torch.get_num_threads()) or {})
    assert build_family(tmp_path / "a", "small").manifest["threads"] == 2
    assert build_family(tmp_path / "b", "small", threads=1).manifest["threads"] == 1
    assert seen == [2, 1]
    assert small_family.manifest["threads"] == 1


def test_each_specialist_trains_at_its_own_rate_and_length() -> None:
    cfg = SIZES["full"]
    math_en, lang_ja = cfg.specialists
    assert cfg.lr(math_en) == pytest.approx(cfg.finetune_lr * math_en.lr_scale)
    assert cfg.steps(math_en) == round(cfg.finetune_steps * math_en.steps_scale)
    assert cfg.total_steps == cfg.base_steps + cfg.steps(math_en) + cfg.steps(lang_ja)
    with pytest.raises(ConfigError, match="threads"):
        replace(cfg, threads=0)


def test_specialists_differ_from_the_base(small_family: ToyFamily) -> None:
    base = load_file(small_family.base / "model.safetensors")
    for name, path in small_family.specialists.items():
        spec = load_file(path / "model.safetensors")
        assert any(not spec[k].equal(base[k]) for k in base), name


def test_ensure_family_reuses_the_cache(small_family: ToyFamily) -> None:
    again = ensure_family("small", cache_dir=small_family.root.parent)
    assert again.root == small_family.root
    assert again.manifest == small_family.manifest


def test_crashed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(build, "_train_all", crash)
    with pytest.raises(RuntimeError):
        ensure_family("small", cache_dir=tmp_path, threads=1, pinned=False)
    assert list(tmp_path.iterdir()) == []


def test_a_build_that_loses_the_race_uses_the_winner(
    small_family: ToyFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = build._rename

    def winner_first(tmp: Path, out: Path) -> None:
        # another process renames its finished build into place just before this one does
        out.mkdir()
        (out / "family.json").write_text((small_family.root / "family.json").read_text())
        real_rename(tmp, out)

    monkeypatch.setattr(build, "_rename", winner_first)
    monkeypatch.setattr(build, "_train_all", lambda *a: {})
    family = ensure_family("small", cache_dir=tmp_path, threads=1, pinned=False)
    assert family.manifest == small_family.manifest
    assert [p.name for p in tmp_path.iterdir()] == [small_family.root.name]


def test_errors_name_the_bad_value(tmp_path: Path, small_family: ToyFamily) -> None:
    with pytest.raises(ConfigError, match=r"size must be one of \['full', 'small'\], got 'tiny'"):
        build_family(tmp_path / "x", "tiny")
    with pytest.raises(ConfigError, match="already exists"):
        build_family(small_family.root, "small")
    with pytest.raises(ConfigError, match="has no model 'math_fr'"):
        small_family.path("math_fr")
    with pytest.raises(ConfigError, match=r"family\.json is missing"):
        load_family(tmp_path)


def test_cli_prints_a_summary(small_family: ToyFamily, capsys: pytest.CaptureFixture[str]) -> None:
    monkey_env = {"EVOMERGE_CACHE": str(small_family.root.parent)}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in monkey_env.items():
            mp.setenv(k, v)
        assert toy_main(["--size", "small", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "toy_mgsm_ja" in out and "lang_ja" in out and str(small_family.root) in out
