"""Estimate quality on candidates not used for fitting: Spearman rank correlation and mean
absolute error (points) of `subset` (random, stratified) and `irt` (2PL, 1PL) against the full
fitness split, read from full-split search runs (each trial stores its per-item 0/1 results).

    python scripts/estimator_quality.py results/RUN [results/RUN ...] [--fit 10] [--test 200]
        [--n 35 70 140] [--draws 10] [--out FILE]

Per run: the first --fit scored trials calibrate (as estimator.fit_trials does in a search),
the last --test scored trials (all the others, in a shorter run) are the candidates estimated;
each estimator draws the documents a search would generate and estimates each candidate's
full-split score from them. With a `space.x0=grid` run, --fit 18 calibrates on the grid.
One draw of the items is one search's luck: each figure is the mean over --draws item draws
(estimator seeds 0, 1, ...), with the spread of Spearman's rho across draws beside it.

Ceiling, per run: how well the full split ranks its own held-out candidates against itself.
Split-half reliability (Pearson r between two random halves of the documents, stepped up to
the whole split by Spearman-Brown: 2r / (1 + r)) bounds the correlation of any estimate of a
candidate's ability with its full-split score by sqrt(reliability); and the rank correlation
between n random documents and the other N - n shows how little of the rest n documents
predict without a model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evomerge.evaluate.estimator import EstimatorSpec, fitted_plan, random_plan
from evomerge.evaluate.irt import estimate
from evomerge.evaluate.objectives import parse_terms
from evomerge.search.report import open_run
from evomerge.search.trial_record import BITS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
from evomerge_dev.stats import spearman

ARMS: tuple[tuple[str, str, str], ...] = (
    ("subset", "random", "2pl"),
    ("subset", "stratified", "2pl"),
    ("irt", "", "2pl"),
    ("irt", "", "1pl"),
)


def load_rows(run: Path) -> tuple[list[dict[str, str]], str]:
    study = open_run(run)
    rows = [t.user_attrs[BITS] for t in study.get_trials(deepcopy=False) if BITS in t.user_attrs]
    if not rows:
        raise SystemExit(f"{run}: no trial with per-item results ({BITS})")
    return rows, next(iter(rows[0]))


def quality(
    rows: list[dict[str, str]],
    key: str,
    arm: tuple[str, str, str],
    n: int,
    fit: int,
    test: int,
    seed: int = 0,
) -> dict[str, float]:
    kind, select, model = arm
    task, metric = key.split("/")
    objective = parse_terms([{"task": task, "metric": metric}], "task.fitness")
    y = np.array([[c == "1" for c in r[key]] for r in rows], dtype=np.float64)
    calib, held = rows[:fit], y[-test:]
    universe = {task: list(range(y.shape[1]))}
    spec = EstimatorSpec(kind=kind, select=select or "random", model=model, n=n, seed=seed)
    if kind == "subset" and select == "random":
        plan = random_plan(universe, n, seed=seed)
    else:
        plan = fitted_plan(spec, universe, objective, calib)
    if kind == "irt":
        item_model = plan.models[key]
        est = np.array([estimate(item_model, row[item_model.anchors]) for row in held])
    else:
        est = held[:, plan.items[task]].mean(1)
    truth = held.mean(1)
    return {
        "spearman": round(spearman(est, truth), 4),
        "mae_points": round(100 * float(np.abs(est - truth).mean()), 3),
    }


CEILING_DRAWS = 200  # random splits averaged per ceiling figure (each a few ms)


def ceiling(rows: list[dict[str, str]], key: str, test: int, n: list[int]) -> dict[str, float]:
    """The held-out candidates' full-split reliability and what n documents say of the rest."""
    y = np.array([[c == "1" for c in r[key]] for r in rows[-test:]], dtype=np.float64)
    docs = y.shape[1]
    rng = np.random.default_rng(0)
    halves = []
    rest: dict[int, list[float]] = {k: [] for k in n}
    for _ in range(CEILING_DRAWS):
        p = rng.permutation(docs)
        a, b = y[:, p[: docs // 2]].mean(1), y[:, p[docs // 2 :]].mean(1)
        halves.append(float(np.corrcoef(a, b)[0, 1]))
        for k in n:
            rest[k].append(spearman(y[:, p[:k]].mean(1), y[:, p[k:]].mean(1)))
    r = statistics.mean(halves)
    reliability = 2 * r / (1 + r)
    out = {
        "true_sd_points": round(100 * float(y.mean(1).std(ddof=1)), 3),
        "split_half_r": round(r, 4),
        "reliability": round(reliability, 4),
        "correlation_bound": round(reliability**0.5, 4),
    }
    for k in n:
        out[f"spearman_{k}_vs_rest"] = round(statistics.mean(rest[k]), 4)
    return out


def arm_name(arm: tuple[str, str, str], n: int) -> str:
    kind, select, model = arm
    return f"{kind} ({select or model}) n={n}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--fit", type=int, default=10)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--n", type=int, nargs="+", default=[35, 70, 140])
    p.add_argument("--draws", type=int, default=10, help="item draws (seeds) per figure")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    table: dict[str, Any] = {}
    for run in args.runs:
        rows, key = load_rows(run)
        if len(rows) < args.fit + 10:
            raise SystemExit(f"{run}: {len(rows)} trials; need --fit + 10")
        test = min(args.test, len(rows) - args.fit)  # a shorter run: all its other trials
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        bound = ceiling(rows, key, test, args.n)
        table.setdefault("ceiling", {})[str(run)] = bound
        print(f"{run.name} seed {cfg.get('seed')}: ceiling: {bound}", flush=True)
        for arm in ARMS:
            for n in args.n:
                draws = [
                    quality(rows, key, arm, n, args.fit, test, seed) for seed in range(args.draws)
                ]
                rhos = [d["spearman"] for d in draws]
                q = {
                    "spearman": round(statistics.mean(rhos), 4),
                    "spearman_min": min(rhos),
                    "spearman_max": max(rhos),
                    "mae_points": round(statistics.mean(d["mae_points"] for d in draws), 3),
                    "draws": args.draws,
                    "test": test,
                }
                table.setdefault(arm_name(arm, n), {})[str(run)] = q
                print(f"{run.name} seed {cfg.get('seed')}: {arm_name(arm, n)}: {q}", flush=True)
    for name, by_run in table.items():
        if name == "ceiling":
            keys = next(iter(by_run.values())).keys()
            by_run["mean"] = {
                k: round(statistics.mean(b[k] for b in list(by_run.values())), 4) for k in keys
            }
            print(f"mean ceiling: {by_run['mean']}")
            continue
        by_run["mean"] = {
            "spearman": round(statistics.mean(q["spearman"] for q in by_run.values()), 4),
            "mae_points": round(statistics.mean(q["mae_points"] for q in by_run.values()), 3),
        }
        print(f"mean {name}: {by_run['mean']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"fit": args.fit, "test": args.test, "draws": args.draws}
        record["runs"] = [str(r) for r in args.runs]
        args.out.write_text(json.dumps({**record, "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
