"""Multi-objective search on the toy: samplers x seeds, hypervolume along the run, the front's
members on the held-out test splits, against the single-objective search's winner.

    OMP_NUM_THREADS=1 python scripts/bench_multiobjective.py --samplers nsga2,motpe \
        --seeds 0,1,2 [--trials 300] [--budgets 100,200,300] [--out results/multiobjective]
    OMP_NUM_THREADS=1 python scripts/bench_multiobjective.py --single --seeds 0,1,2
    python scripts/bench_multiobjective.py --report-only --samplers nsga2,motpe --seeds 0,1,2

Each run is an ordinary, resumable search in <out>/<sampler>-seed<n>/ (task=toy_mgsm_ja_keep);
`--single` runs the default single-objective search (<out>/single-seed<n>/, task=toy_mgsm_ja)
with its winner scored on the same three test splits. Hypervolume: of the feasible front
(every constraint satisfied) among the first b candidates, on the fitness splits, in accuracy
units with reference point (0, 0, 0): the volume of the box [0, 1]^3 that the front dominates;
and of the front of all candidates, constraints ignored (`hypervolume_unconstrained`), which
still compares the samplers where few or no candidates satisfy the constraints.
The goal: a front member within 2 points of the single-objective winner on the target's test
split while toy_math_en >= 0.80 and toy_lang_ja >= 0.90 on theirs. The toy family's bytes
depend on the CPU that built it (README, "toy family"); where its math parent scores below the
documented family's 90.7 on its test split, no merge may reach the floor of 80, so the report
also gives the goal scaled to the family: the math floor as the same share of the family's math
parent (80 / 90.7 of it), the language floor unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import optuna

from evomerge.config import compose, dump_config
from evomerge.search.config import search_config
from evomerge.search.front import hypervolume_at
from evomerge.search.loop import run_search
from evomerge.toy.build import MANIFEST, default_cache_dir, family_dirname, load_family

TESTS = ["toy_mgsm_ja", "toy_math_en", "toy_lang_ja"]
KEEP = {"toy_math_en": 0.80, "toy_lang_ja": 0.90}  # the goal's floors on the test splits
DOCUMENTED_MATH_PARENT = 0.907  # the documented family's math_en parent on toy_math_en's test
MARGIN = 0.02  # the goal: within 2 points of the single-objective winner on the target


def run(out: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    raw = compose("search", [f"results_dir={out}", f"run={name}", *overrides])
    cfg = search_config(raw)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(raw))  # as the CLI: report, export
    summary = run_search(cfg, progress=False)
    study = optuna.load_study(study_name=name, storage=cfg.storage_url)
    summary["trial_seconds"] = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.trials
        if t.datetime_complete and t.datetime_start
    ]
    return summary


def multi(out: Path, sampler: str, seed: int, trials: int, budgets: list[int], extra: list[str]):
    name = f"{sampler}-seed{seed}"
    overrides = [
        "task=toy_mgsm_ja_keep",
        f"optimizer={sampler}",
        f"optimizer.n_trials={trials}",
        f"seed={seed}",
        *extra,
    ]
    summary = run(out, name, overrides)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'study.db'}")
    hv = hypervolume_at(study.trials, study.directions, budgets, (0.0, 0.0, 0.0))
    record = {
        "sampler": sampler,
        "seed": seed,
        "trials": trials,
        "hypervolume": hv,
        "hypervolume_unconstrained": unconstrained(study, budgets),
        "summary": summary,
        "goal_member": goal_member(summary["pareto"]),
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def goal_member(
    pareto: list[dict[str, Any]], keep: dict[str, float] = KEEP
) -> dict[str, Any] | None:
    """The front member with the best target test score among those keeping both skills."""
    keeping = [
        m
        for m in pareto
        if m["test_metrics"] and all(m["test_metrics"][t]["acc"] >= v for t, v in keep.items())
    ]
    best = max(keeping, key=lambda m: m["test_metrics"]["toy_mgsm_ja"]["acc"], default=None)
    return None if best is None else {"trial": best["trial"], "test": test_accs(best)}


def test_accs(entry: dict[str, Any]) -> dict[str, float]:
    return {t: entry["test_metrics"][t]["acc"] for t in TESTS}


def single(out: Path, seed: int, trials: int, extra: list[str]) -> dict[str, Any]:
    name = f"single-seed{seed}"
    tests = "[" + ",".join(TESTS) + "]"
    overrides = [f"optimizer.n_trials={trials}", f"seed={seed}", f"task.test={tests}", *extra]
    summary = run(out, name, overrides)
    record = {"seed": seed, "trials": trials, "summary": summary}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def report(out: Path, samplers: list[str], seeds: list[int], budgets: list[int]) -> str:
    lines: list[str] = []
    for key, title in (
        ("hypervolume", "Hypervolume of the feasible front"),
        ("hypervolume_unconstrained", "Hypervolume of the front, constraints ignored"),
    ):
        lines += [f"{title} (mean ± sd over seeds):", ""]
        lines += ["| sampler | " + " | ".join(f"HV @{b}" for b in budgets) + " | runs |"]
        lines.append("|---|" + "---:|" * len(budgets) + "---:|")
        for s in samplers:
            recs = [
                json.loads(p.read_text())
                for p in (out / f"{s}-seed{n}.json" for n in seeds)
                if p.is_file()
            ]
            recs = [r for r in recs if key in r or recompute(out, r)]
            cells = []
            for b in budgets:
                vals = [r[key][str(b)] for r in recs if str(b) in r[key]]
                cells.append(_mean_sd(vals))
            lines.append(f"| {s} | " + " | ".join(cells) + f" | {len(recs)} |")
        lines.append("")
    lines += [f"Goal as written: {_floors(KEEP)}.", ""]
    lines += goal_table(out, samplers, seeds, KEEP)
    scaled = scaled_keep()
    if scaled != KEEP:
        lines += ["", f"Goal scaled to this family: {_floors(scaled)}.", ""]
        lines += goal_table(out, samplers, seeds, scaled)
    return "\n".join(lines + fronts(out, samplers, seeds))


def recompute(out: Path, record: dict[str, Any]) -> bool:
    """Adds the unconstrained hypervolume to a record written before it was kept."""
    name = f"{record['sampler']}-seed{record['seed']}"
    db = out / name / "study.db"
    if not db.is_file():
        return False
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    budgets = [int(b) for b in record["hypervolume"]]
    record["hypervolume_unconstrained"] = unconstrained(study, budgets)
    return True


def unconstrained(study: optuna.Study, budgets: list[int]) -> dict[str, float]:
    """Hypervolume of the front of all candidates (constraints ignored) at each budget."""
    every = hypervolume_at(
        study.trials, study.directions, budgets, (0.0, 0.0, 0.0), feasible_only=False
    )
    return {str(b): v for b, v in every.items()}


def scaled_keep() -> dict[str, float]:
    """The goal's floors on this machine's toy family: the math floor as the same share of the
    family's math parent as 80 is of the documented 90.7 (never above the written floor). The
    cached family is read, never built: without it, the floors as written."""
    root = default_cache_dir() / family_dirname("full")
    if not (root / MANIFEST).is_file():
        return KEEP
    parent = load_family(root).probe_scores["math_en"]["toy_math_en"]
    share = KEEP["toy_math_en"] / DOCUMENTED_MATH_PARENT
    return {**KEEP, "toy_math_en": round(min(KEEP["toy_math_en"], share * parent), 4)}


def _floors(keep: dict[str, float]) -> str:
    return ", ".join(f"{t} >= {100 * v:.1f}" for t, v in keep.items())


def goal_table(out: Path, samplers: list[str], seeds: list[int], keep: dict[str, float]):
    """Per run: the front member that meets the goal's floors with the best target test score,
    against the single-objective winner; where none does, the front's best math_en test."""
    lines = [
        "| run | goal member (trial) | target test | math_en test | lang_ja test | "
        "single-objective winner's target test | gap | front's best math_en test |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samplers:
        for n in seeds:
            path, ref = out / f"{s}-seed{n}.json", out / f"single-seed{n}.json"
            if not path.is_file():
                continue
            pareto = json.loads(path.read_text())["summary"]["pareto"]
            member = goal_member(pareto, keep)
            so = test_accs(json.loads(ref.read_text())["summary"]) if ref.is_file() else None
            target = member["test"]["toy_mgsm_ja"] if member else None
            gap = (
                "-"
                if so is None or target is None
                else f"{100 * (target - so['toy_mgsm_ja']):+.1f}"
            )
            math = [m["test_metrics"]["toy_math_en"]["acc"] for m in pareto if m["test_metrics"]]
            row = [f"{s}-seed{n}", str(member["trial"]) if member else "none"]
            row += [f"{100 * member['test'][t]:.1f}" if member else "-" for t in TESTS]
            row += [f"{100 * so['toy_mgsm_ja']:.1f}" if so else "-", gap]
            row += [f"{100 * max(math):.1f}" if math else "-"]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def fronts(out: Path, samplers: list[str], seeds: list[int]) -> list[str]:
    """Every run's front: fitness-split objectives and test-split scores, in percent."""
    lines = []
    for s in samplers:
        for n in seeds:
            path = out / f"{s}-seed{n}.json"
            if not path.is_file():
                continue
            summary = json.loads(path.read_text())["summary"]
            lines += [
                "",
                f"{s}-seed{n}: {summary['trials']} candidates, chosen trial "
                f"{summary['best_trial']}; front (fitness splits | test splits, %):",
                "",
            ]
            lines += [
                "| trial | target | math_en | lang_ja | feasible | toy_mgsm_ja | "
                "toy_math_en | toy_lang_ja |",
                "|---|" + "---:|" * 3 + "---|" + "---:|" * 3,
            ]
            for m in summary["pareto"]:
                fit = [f"{100 * v:.1f}" for v in m["objectives"].values()]
                test = (
                    [f"{100 * v:.1f}" for v in test_accs(m).values()]
                    if m["test_metrics"]
                    else ["-"] * 3
                )
                lines.append(
                    "| " + " | ".join([str(m["trial"]), *fit, str(m["feasible"]), *test]) + " |"
                )
    return lines


def _mean_sd(vals: list[float]) -> str:
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.4f} ± {sd:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samplers", default="nsga2,motpe")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--budgets", default="100,200,300")
    p.add_argument("--out", type=Path, default=Path("results/multiobjective"))
    p.add_argument("--single", action="store_true", help="the single-objective reference runs")
    p.add_argument("--report-only", action="store_true")
    args, extra = p.parse_known_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [int(b) for b in args.budgets.split(",")]
    samplers = args.samplers.split(",")
    extra = ["threads=1", *extra]  # one torch thread: the machine is shared
    if args.single and not args.report_only:
        for n in seeds:
            single(args.out, n, args.trials, extra)
    elif not args.report_only:
        for s in samplers:
            for n in seeds:
                multi(args.out, s, n, args.trials, budgets, extra)
    table = report(args.out, samplers, seeds, budgets)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
