"""`python -m evomerge export results/<run> [--out DIR] [--device cpu|cuda]`: materialize the
run's best recipe (results/<run>/best_recipe.yaml) as a Hugging Face checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from evomerge.errors import SearchError
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.recipe import load_recipe


def export_run(run_dir: Path, out: Path | None = None, *, device: str = "cpu") -> Path:
    """Merge the best recipe of a run to `out` (default `<run_dir>/best_model`)."""
    recipe_path = run_dir / "best_recipe.yaml"
    if not recipe_path.is_file():
        raise SearchError(
            f"{run_dir}: no best_recipe.yaml; is this a search run directory with a "
            "completed candidate? (python -m evomerge search writes one)"
        )
    recipe = load_recipe(recipe_path)
    return merge_to_disk(recipe, out or run_dir / "best_model", MergeOptions(device=device))


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m evomerge export", description=__doc__)
    p.add_argument("run_dir", type=Path, help="a search run directory, e.g. results/<run>")
    p.add_argument("--out", type=Path, default=None, help="output directory (<run>/best_model)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(list(argv))
    out = export_run(args.run_dir, args.out, device=args.device)
    print(f"wrote {out}")
    return 0
