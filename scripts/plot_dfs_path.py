"""Draw the evolved layer path of a DFS or PS+DFS run (its best_recipe.yaml) as a PNG.

    .venv/bin/python scripts/plot_dfs_path.py results/<run> results/<run>-path.png

Models are labelled by their directory names (toy: math_en, lang_ja; PS+DFS: ps_model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evomerge.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
from evomerge_dev.analysis.dfs_plot import plot_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args()
    recipe = load_recipe(args.run_dir / "best_recipe.yaml")
    names = {ref: Path(ref).name for ref in recipe.referenced_models()}
    title = f"{args.run_dir.name}: {len(recipe.slices)} layers"
    summary = args.run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        test = (s.get("test_metrics") or {}).get("toy_mgsm_ja", {}).get("acc")
        title += f", fitness {s.get('fitness', float('nan')):.3f}"
        title += f", test {test:.3f}" if test is not None else ""
    plot_path(recipe, names, args.out, title)
    print(f"path plot: {args.out}")


if __name__ == "__main__":
    main()
