"""Optimizer comparison on the toy: every sampler x seed at an equal trial budget.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_optimizers.py \
        [--samplers cmaes,pycma,tpe,random] [--seeds 0,1,2] [--trials 100] \
        [--budgets 25,50,100] [--out results/bench-optimizers] [--plot results/optimizers.png] \
        [hydra overrides for every run, e.g. models.toy_size=small]

Each run is an ordinary search (results/bench-optimizers/<sampler>-seed<n>/, resumable); a run
whose <sampler>-seed<n>.json exists with the same budget is not run again, so the bench can be
split across processes (disjoint --samplers) and `--report-only` then gathers the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
from evomerge_dev.analysis.compare import (
    load_results,
    markdown_table,
    plot_curves,
    run_bench,
    summarize,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samplers", default="cmaes,pycma,tpe,random")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--budgets", default="25,50,100")
    p.add_argument("--out", type=Path, default=Path("results/bench-optimizers"))
    p.add_argument("--plot", type=Path, default=Path("results/optimizers.png"))
    p.add_argument("--report-only", action="store_true", help="table and plot from saved runs")
    args, overrides = p.parse_known_args()
    samplers = args.samplers.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [b for b in (int(b) for b in args.budgets.split(",")) if b <= args.trials]
    overrides = ["threads=1", *overrides]  # one torch thread: the machine is shared
    if not args.report_only:
        run_bench(samplers, seeds, args.trials, args.out, overrides)
    results = [r for r in load_results(args.out, samplers, seeds) if r.n_trials == args.trials]
    rows = summarize(results, budgets)
    table = markdown_table(rows, budgets)
    print(table)
    summary = {"trials": args.trials, "budgets": budgets, "overrides": overrides, "rows": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    title = f"toy PS search, {args.trials} trials, mean of {len(seeds)} seeds (band: min-max)"
    plot_curves(results, args.plot, title)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
