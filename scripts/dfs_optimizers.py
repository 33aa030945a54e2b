"""DFS optimizers at equal trials: plain CMA-ES over relaxed indicators vs CMA-ES with Margin.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/dfs_optimizers.py \
        [--variants relaxed,margin] [--seeds 0,1] [--trials 60] [--budgets 20,40,60] \
        [--out results/bench-dfs-optimizers] [--plot results/dfs_optimizers.png] \
        [hydra overrides, e.g. space.scaling=model_pair models.toy_size=small]

Both variants score candidates exactly as `python -m evomerge search space=dfs` does (same space,
same scorer: a layer path over sources loaded once); see evomerge_dev/analysis/mixed.py. Each run is
saved as <out>/<variant>-seed<n>.json and not repeated; --report-only gathers the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from evomerge.config import compose
from evomerge.errors import RecipeError
from evomerge.evaluate import CandidateFailed
from evomerge.genome.dfs import DFSSpace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
from evomerge.search.config import search_config
from evomerge.search.scorer import make_scorer
from evomerge.search.space import build_space
from evomerge_dev.analysis.compare import (
    RunResult,
    load_results,
    markdown_table,
    plot_curves,
    summarize,
)
from evomerge_dev.analysis.mixed import best_so_far, run_cmaes


def run_all(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = search_config(compose("search", ["space=dfs", "threads=1", *overrides]))
    space = build_space(cfg)
    assert isinstance(space, DFSSpace)  # space=dfs above; not user input
    scorer = make_scorer(
        space.template_model, cfg.evaluator, cfg.task, merge_on=cfg.merge_on, seed=cfg.seed
    )

    def score(x: np.ndarray) -> float | None:
        try:
            return scorer.score(space.decode(x)).fitness
        except (RecipeError, CandidateFailed):
            return None

    for seed in args.seeds:
        for variant in args.variants:
            path = args.out / f"{variant}-seed{seed}.json"
            if path.is_file():
                continue
            t0 = time.perf_counter()
            values = run_cmaes(
                space, score, variant=variant, n_trials=args.trials, seed=seed,
                popsize=cfg.optimizer.population_size, sigma0=cfg.optimizer.sigma0,
            )  # fmt: skip
            wall = round(time.perf_counter() - t0, 1)
            curve = best_so_far(values)
            best = int(np.argmax([v if v is not None else -1.0 for v in values]))
            result = RunResult(variant, seed, args.trials, curve, None, best, wall, wall)
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(asdict(result), indent=1) + "\n")
            print(f"{variant} seed {seed}: best {curve[-1]} in {wall} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", default="relaxed,margin")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--budgets", default="20,40,60")
    p.add_argument("--out", type=Path, default=Path("results/bench-dfs-optimizers"))
    p.add_argument("--plot", type=Path, default=Path("results/dfs_optimizers.png"))
    p.add_argument("--report-only", action="store_true")
    args, overrides = p.parse_known_args()
    args.variants = args.variants.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not args.report_only:
        run_all(args, overrides)
    results = [r for r in load_results(args.out, args.variants, args.seeds)]
    budgets = [int(b) for b in args.budgets.split(",") if int(b) <= args.trials]
    print(markdown_table(summarize(results, budgets), budgets))
    title = f"DFS on the toy: {args.trials} trials, mean of {len(args.seeds)} seeds"
    plot_curves(results, args.plot, title)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
