"""A search's winner at a given number of generated fitness documents: the best candidate by
(estimated) fitness among the trials whose running total of `items` stays within the budget,
re-scored on the full fitness split and on the test split.

    python scripts/equal_items.py results/RUN --items 210000 [--out FILE]

Used to compare searches at equal generation cost: a full-split search's winner after as many
documents as an `estimator=irt` search generated in all (its summary.json `items_generated`
plus `items_rescored`), or the reverse.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from optuna.trial import TrialState

from evomerge.evaluate import fitness, load_tasks
from evomerge.search.config import search_config
from evomerge.search.outputs import genome_recipe
from evomerge.search.report import open_run
from evomerge.search.scorer import make_scorer
from evomerge.search.space import build_space


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    study = open_run(args.run)
    total, within = 0, []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        total += int(t.user_attrs.get("items", 0))
        if total > args.items:
            break
        if t.state == TrialState.COMPLETE:
            within.append(t)
    if not within:
        raise SystemExit(f"{args.run}: no scored trial within {args.items} documents")
    best = max(within, key=lambda t: (t.values[0], -t.number))
    raw = yaml.safe_load((args.run / "config.yaml").read_text())  # the composed config
    cfg = search_config({**raw, "results_dir": str(args.run.parent)})
    space = build_space(cfg)
    scorer = make_scorer(
        space.template_model, cfg.evaluator, cfg.task, merge_on=cfg.merge_on, seed=cfg.seed
    )
    recipe = genome_recipe(space, best)
    scorer.load(recipe)
    fit = fitness(scorer.generate().results, cfg.task.objective)
    tasks = load_tasks(cfg.task.test, cfg.evaluator, extra_paths=cfg.task.include)
    record = {
        "run": str(args.run),
        "items_budget": args.items,
        "trials_within": len(within),
        "best_trial": best.number,
        "best_estimate": best.values[0],
        "fitness": fit,
        "test_metrics": scorer.evaluate_on(recipe, tasks),
    }
    print(json.dumps(record))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
