"""`python -m evomerge export results/<run> [--trial N] [--out DIR] [--device cpu|cuda]`:
materialize the run's best recipe (results/<run>/best_recipe.yaml), or the candidate of any
scored trial (e.g. a member of a multi-objective run's front), as a Hugging Face checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from optuna.trial import TrialState

from evomerge.errors import SearchError
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.recipe import Recipe, load_recipe


def export_run(
    run_dir: Path, out: Path | None = None, *, device: str = "cpu", trial: int | None = None
) -> Path:
    """Merge the best recipe of a run, or trial `trial`'s, to `out` (default
    `<run_dir>/best_model` or `<run_dir>/trial_<N>_model`)."""
    if trial is not None:
        recipe = trial_recipe(run_dir, trial)
        return merge_to_disk(
            recipe, out or run_dir / f"trial_{trial}_model", MergeOptions(device=device)
        )
    recipe_path = run_dir / "best_recipe.yaml"
    if not recipe_path.is_file():
        raise SearchError(
            f"{run_dir}: no best_recipe.yaml; is this a search run directory with a "
            "completed candidate? (python -m evomerge search writes one)"
        )
    recipe = load_recipe(recipe_path)
    return merge_to_disk(recipe, out or run_dir / "best_model", MergeOptions(device=device))


def trial_recipe(run_dir: Path, number: int) -> Recipe:
    """The recipe of a scored trial, decoded from its genome in the run's own space."""
    import yaml

    from evomerge.search.config import search_config
    from evomerge.search.loop import genome_recipe
    from evomerge.search.report import open_run
    from evomerge.search.space import build_space

    study = open_run(run_dir)
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        raise SearchError(
            f"--trial {number}: no such trial in {run_dir} (trials 0..{len(trials) - 1})"
        )
    t = found[0]
    if t.state != TrialState.COMPLETE:
        reason = t.user_attrs.get("failure_reason", "")
        raise SearchError(
            f"--trial {number}: the trial is {t.state.name}{f' ({reason[:60]})' if reason else ''}"
            "; only scored (COMPLETE) trials export"
        )
    cfg = search_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    return genome_recipe(build_space(cfg), t)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m evomerge export", description=__doc__)
    p.add_argument("run_dir", type=Path, help="a search run directory, e.g. results/<run>")
    p.add_argument("--trial", type=int, default=None, help="export this trial (default: best)")
    p.add_argument("--out", type=Path, default=None, help="output directory (<run>/best_model)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(list(argv))
    out = export_run(args.run_dir, args.out, device=args.device, trial=args.trial)
    print(f"wrote {out}")
    return 0
