"""export and report on a finished run; the progress bar's fields."""

import json
import subprocess
import sys

import optuna
import pytest
import torch
from transformers import AutoModelForCausalLM

import evomerge
from evomerge.config import compose, dump_config
from evomerge.errors import SearchError
from evomerge.merge.card import read_front_matter
from evomerge.recipe import load_recipe
from evomerge.search.config import search_config
from evomerge.search.export import export_run
from evomerge.search.loop import run_search
from evomerge.search.outputs import progress_fields
from evomerge.search.report import overhead_share, write_report


@pytest.fixture(scope="module")
def run_dir(toy_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    raw = compose(
        "search",
        [
            "models.toy_size=small",
            "optimizer.n_trials=5",
            "optimizer.population_size=4",
            "evaluator.limit=30",
            "threads=1",
            f"results_dir={root}",
            "run=r",
        ],
    )
    cfg = search_config(raw)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(raw))
    run_search(cfg, progress=False)
    return cfg.run_dir


def test_report_writes_plots_and_a_summary(run_dir):
    out = write_report(run_dir)
    assert out["trials"] == 5
    text = (run_dir / "report.md").read_text()
    assert "candidates: 5 (5 scored, 0 failed)" in text
    assert "median generate seconds per candidate" in text
    assert "time outside generation/scoring" in text
    assert "best: trial" in text and "toy_mgsm_ja" in text
    for png in ("history.png", "genome.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"


def test_export_materializes_the_best_recipe(run_dir, tmp_path):
    out = export_run(run_dir, tmp_path / "best")
    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
    card = (out / "README.md").read_text()
    assert "merge_method: dare_ties" in card
    # the card says where the model came from, in the form the Hub reads
    meta = read_front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["tags"][:2] == ["merge", "evomerge"] and "dare_ties" in meta["tags"]
    assert "base_model" not in meta  # the toy family is local: named in the text only
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"candidates evaluated: 5 (0 failed); best: trial {summary['best_trial']}" in card
    test_acc = summary["test_metrics"]["toy_mgsm_ja"]["acc"]
    assert f"| test (held out) | `toy_mgsm_ja` | acc | {test_acc:.4g} |" in card
    assert "task: `toy_mgsm_ja`; fitness: 1.0 x `toy_mgsm_ja_fit` acc" in card
    assert "- base model: `toy:base`" in card and "- `math_en`: `toy:math_en`" in card
    assert f"evomerge {evomerge.__version__}" in card
    recipe_text = card.split("```yaml\n")[1].split("```")[0]
    assert load_recipe(recipe_text) == load_recipe(run_dir / "best_recipe.yaml")
    with pytest.raises(SearchError, match="already exists"):
        export_run(run_dir, out)


def test_commands_refuse_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(SearchError, match=r"no config\.yaml; not a search run directory"):
        export_run(tmp_path)
    for cmd in ("export", "report"):
        r = subprocess.run(
            [sys.executable, "-m", "evomerge", cmd, str(tmp_path)], capture_output=True, text=True
        )
        assert r.returncode == 2
        assert str(tmp_path) in r.stderr


def test_the_progress_bar_shows_a_zero_fitness_as_zero():
    best = optuna.trial.create_trial(value=0.45, user_attrs={"merge_s": 0.1, "eval_s": 1.2})
    last = optuna.trial.create_trial(value=0.0, user_attrs={"merge_s": 0.1, "eval_s": 0.9})
    assert progress_fields(best, last) == {"best": "0.4500", "last": "0.0000", "s_per_cand": "1.00"}


def test_overhead_share_is_the_time_outside_generation_over_all_candidates():
    def trial(merge, swap, ev, gen):
        attrs = {"merge_s": merge, "swap_s": swap, "eval_s": ev, "generate_s": gen}
        return optuna.trial.create_trial(value=0.5, user_attrs=attrs)

    # 10 s in all, 8 s of it generating
    trials = [trial(0.5, 0.5, 4.0, 3.5), trial(0.2, 0.3, 4.5, 4.5)]
    assert overhead_share(trials) == pytest.approx(0.2)
    older = optuna.trial.create_trial(value=0.5, user_attrs={"merge_s": 1.0, "eval_s": 9.0})
    assert overhead_share([older]) is None  # runs from before generation was timed
    assert overhead_share([*trials, older]) == pytest.approx(0.2)


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("4", "4")])
def test_the_command_keeps_numpys_blas_on_one_thread_unless_told(given, seen):
    """Idle OpenBLAS threads spin after the sampler's small matrix work, slowing the merge."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    probe = (
        "import runpy, sys; sys.argv = ['evomerge', '--help'];"
        "import contextlib, io, os\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    runpy.run_module('evomerge', run_name='__main__')\n"
        "import numpy.linalg  # loads OpenBLAS with the setting in place\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == seen
