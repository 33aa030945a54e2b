"""The uniform-merge baseline a user would pick: the grid of scripts/toy_grid.py scored on the
fitness split, the best of it reported on the held-out test split (the search's comparison).

    python scripts/uniform_baseline.py [--threads N] [--out results/uniform-baseline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from evomerge.evaluate import EvalSettings, evaluate, load_tasks, make_backend
from evomerge.merge import MergeOptions, SourceCache, merge_into_model
from evomerge.recipe import parse_recipe
from evomerge.toy import ensure_family

sys.path.insert(0, str(Path(__file__).parent))
from toy_grid import grid

FIT, TEST = "toy_mgsm_ja_fit", "toy_mgsm_ja"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("results/uniform-baseline.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    family = ensure_family("full", threads=args.threads)
    settings = EvalSettings(batch_size=64)
    backend = make_backend(family.base, settings)
    tasks = load_tasks([FIT, TEST], settings)
    cache, options = SourceCache(preload=True), MergeOptions(progress=False, random_seed=0)
    rows = {}
    for name, recipe in grid(family).items():
        merge_into_model(parse_recipe(recipe), backend.target, options, cache)
        backend.commit_weights()
        res = evaluate(backend, tasks).results
        rows[name] = {FIT: res[FIT]["acc"], TEST: res[TEST]["acc"]}
        print(f"{name:28s} fitness {rows[name][FIT]:.3f}  test {rows[name][TEST]:.3f}", flush=True)
    best = max(rows, key=lambda k: rows[k][FIT])
    print(
        f"best on the fitness split: {best}: fitness {rows[best][FIT]:.3f}, "
        f"test {rows[best][TEST]:.3f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "best_by_fitness": best}, indent=2) + "\n")


if __name__ == "__main__":
    main()
