"""Optimizer comparison at equal trial budgets: each sampler x seed is one ordinary search run.

`run_bench` runs (or resumes, or skips when done) `<out_dir>/<sampler>-seed<seed>/` with the
same overrides for all, and writes `<out_dir>/<sampler>-seed<seed>.json`: the best fitness so
far after each counted trial and the winner's held-out test score. `summarize` turns those files
into a table (mean and sd over seeds per budget) and `plot_curves` into a figure.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from evomerge.config import compose, dump_config
from evomerge.files import write_text_atomic
from evomerge.search.budget import counted
from evomerge.search.cli import set_up_process
from evomerge.search.config import SearchConfig, search_config
from evomerge.search.loop import run_search


@dataclass(frozen=True)
class RunResult:
    sampler: str
    seed: int
    n_trials: int
    curve: list[float | None]  # best fitness after each counted trial (None: none complete yet)
    test: float | None  # the winner's score on task.test (mean over test tasks)
    best_trial: int | None
    wall_s: float  # this process's seconds on the run (0 when it was already done)
    candidate_seconds: float  # merge + eval seconds summed over trials, from the study


def best_so_far(study: optuna.Study) -> list[float | None]:
    """Running best over the trials that used budget, in trial order (failures add nothing)."""
    curve: list[float | None] = []
    best: float | None = None
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not counted(t):
            continue
        if t.value is not None and (best is None or t.value > best):
            best = t.value
        curve.append(best)
    return curve


def test_score(cfg: SearchConfig, summary: dict[str, Any]) -> float | None:
    """The winner's test metric (the fitness metric's name), averaged over the test tasks."""
    results = summary.get("test_metrics") or {}
    metric = cfg.task.objective.terms[0].metric
    values = [results[t][metric] for t in cfg.task.test if metric in results.get(t, {})]
    return statistics.fmean(values) if values else None


def run_one(
    sampler: str, seed: int, n_trials: int, out_dir: Path, overrides: Sequence[str]
) -> RunResult:
    path = out_dir / f"{sampler}-seed{seed}.json"
    if path.is_file():
        done = RunResult(**json.loads(path.read_text()))
        if done.n_trials == n_trials:
            return done
    raw = compose(
        "search",
        [
            *overrides,
            f"optimizer={sampler}",
            f"optimizer.n_trials={n_trials}",
            f"seed={seed}",
            f"results_dir={out_dir}",
            f"run={sampler}-seed{seed}",
        ],
    )
    cfg = search_config(raw)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.run_dir / "config.yaml", dump_config(raw))
    t0 = time.perf_counter()
    set_up_process(cfg)
    summary = run_search(cfg, progress=False)
    study = optuna.load_study(study_name=cfg.run, storage=cfg.storage_url)
    result = RunResult(
        sampler=sampler,
        seed=seed,
        n_trials=n_trials,
        curve=best_so_far(study)[:n_trials],
        test=test_score(cfg, summary),
        best_trial=summary.get("best_trial"),
        wall_s=round(time.perf_counter() - t0, 1),
        candidate_seconds=float(summary.get("candidate_seconds", 0.0)),
    )
    write_text_atomic(path, json.dumps(asdict(result), indent=1) + "\n")
    return result


def run_bench(
    samplers: Sequence[str],
    seeds: Sequence[int],
    n_trials: int,
    out_dir: Path,
    overrides: Sequence[str] = (),
) -> list[RunResult]:
    """Every sampler x seed; seeds outermost, so a stopped bench has compared all samplers."""
    results = []
    for seed in seeds:
        for sampler in samplers:
            r = run_one(sampler, seed, n_trials, out_dir, overrides)
            best = r.curve[-1] if r.curve else None
            print(f"{sampler} seed {seed}: best fitness {best}, test {r.test}, {r.wall_s} s")
            results.append(r)
    return results


def load_results(out_dir: Path, samplers: Sequence[str], seeds: Sequence[int]) -> list[RunResult]:
    paths = [out_dir / f"{s}-seed{seed}.json" for s in samplers for seed in seeds]
    return [RunResult(**json.loads(p.read_text())) for p in paths if p.is_file()]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


def summarize(results: Sequence[RunResult], budgets: Sequence[int]) -> list[dict[str, Any]]:
    """Per sampler: mean and sd over seeds of the best fitness at each budget, and of test."""
    rows = []
    for sampler in dict.fromkeys(r.sampler for r in results):
        runs = [r for r in results if r.sampler == sampler]
        row: dict[str, Any] = {"sampler": sampler, "seeds": [r.seed for r in runs]}
        for b in budgets:
            at = [v for r in runs if len(r.curve) >= b and (v := r.curve[b - 1]) is not None]
            row[f"fitness@{b}"] = mean_sd(at) if len(at) == len(runs) else None
        tests = [r.test for r in runs if r.test is not None]
        row["test"] = mean_sd(tests) if tests else None
        row["candidate_s"] = statistics.fmean(
            r.candidate_seconds / max(len(r.curve), 1) for r in runs
        )
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], budgets: Sequence[int]) -> str:
    def cell(v: tuple[float, float] | None) -> str:
        return "-" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}"

    head = ["sampler", *(f"best fitness @{b}" for b in budgets), "winner's test", "s / cand"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["sampler"], *(cell(row[f"fitness@{b}"]) for b in budgets)]
        cells += [cell(row["test"]), f"{row['candidate_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_curve(runs: Sequence[RunResult]) -> list[float]:
    n = min(len(r.curve) for r in runs)
    out = []
    for i in range(n):
        values = [r.curve[i] for r in runs]
        out.append(math.nan if None in values else statistics.fmean(v or 0.0 for v in values))
    return out


def plot_curves(results: Sequence[RunResult], path: Path, title: str) -> None:
    """Best fitness so far vs trials, one line per sampler (mean over seeds, min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for sampler in dict.fromkeys(r.sampler for r in results):
        runs = [r for r in results if r.sampler == sampler]
        mean = mean_curve(runs)
        x = range(1, len(mean) + 1)
        lo = [min(r.curve[i] or 0.0 for r in runs) for i in range(len(mean))]
        hi = [max(r.curve[i] or 0.0 for r in runs) for i in range(len(mean))]
        (line,) = ax.plot(x, mean, label=f"{sampler} (n={len(runs)})")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("trials (candidates evaluated)")
    ax.set_ylabel("best fitness so far (fitness split)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
