"""`python -m evomerge search` rejects a bad command in one line (exit 2, key path, rule)
before it writes anything in the run directory."""

import os
from pathlib import Path

import pytest
import torch

from evomerge.__main__ import main
from evomerge_dev.testing import SMALL_SEARCH

RUN = ("run=r", "optimizer.n_trials=1", "score_test=false", *SMALL_SEARCH)


def search(tmp_path: Path, *overrides: str) -> int:
    return main(["search", f"results_dir={tmp_path}", *RUN, *overrides])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.n_trials=abc", "optimizer.n_trials: must be an integer, got 'abc'"),
        ("optimizer.n_trials=1.5", "optimizer.n_trials: must be an integer, got 1.5"),
        ("seed=abc", "seed: must be an integer, got 'abc'"),
        ("heartbeat_s=abc", "heartbeat_s: must be an integer, got 'abc'"),
        ("threads=-1", "threads: must be >= 1, got -1"),
        ("max_retry=-1", "max_retry: must be >= 0, got -1"),
        ("score_test=no", "score_test: must be true or false, got 'no'"),
        ("sqlite_wal=1", "sqlite_wal: must be true or false, got 1"),
        ("space.weight_range=[1,0]", "space.weight_range: must satisfy low < high"),
        ("space.layers_per_group=x", "space.layers_per_group: must be an integer"),
        ("+space.typo=1", "space: unknown key(s) ['typo']"),
        ("+typo=1", "unknown key(s) ['typo']"),
        ("~space.x0_weight", "x0_weight: missing"),
    ],
)
def test_bad_values_are_one_line_errors_and_write_nothing(tmp_path, capsys, override, message):
    assert search(tmp_path, override) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_results_dir_is_named(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["search", f"results_dir={blocker}", *RUN]) == 2
    assert f"results_dir: cannot write the run to {blocker / 'r'}" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_device_is_a_config_error(tmp_path, capsys):
    assert search(tmp_path, "evaluator.device=cuda") == 2
    assert "evaluator.device: cuda requested but no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--cfg=job"], ["-c", "job"], ["--cfg"]])
def test_hydra_cfg_job_prints_the_composed_config(tmp_path, capsys, flags):
    assert main(["search", *flags, "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "optimizer:" in out


def test_a_rejected_rerun_leaves_the_run_as_it_was(toy_cache, tmp_path, capsys):
    assert search(tmp_path) == 0
    capsys.readouterr()
    run_dir = tmp_path / "r"
    # A finished run closes its study: the write-ahead log is folded back into study.db.
    assert not (run_dir / "study.db-wal").exists()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    for override in ("space.layers_per_group=2", "space.method=ties", "space.weight_range=[1,0]"):
        assert search(tmp_path, override) == 2
        assert "\n" not in capsys.readouterr().err.strip()
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 1),  # the toy family's own choice (models.threads: small matrices)
        (["threads=2"], 2),  # the user's top-level setting wins
        (["models=evollm_jp"], None),  # no choice: all cores
    ],
)
def test_search_threads_come_from_the_user_then_the_models(
    overrides: list[str], expected: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evomerge.config import compose
    from evomerge.search.cli import set_up_process
    from evomerge.search.config import search_config

    cfg = search_config(compose("search", overrides))
    monkeypatch.setenv("TQDM_DISABLE", os.environ.get("TQDM_DISABLE", ""))  # restored after
    before = torch.get_num_threads()
    try:
        set_up_process(cfg)
        assert torch.get_num_threads() == (expected or os.cpu_count())
    finally:
        torch.set_num_threads(before)
