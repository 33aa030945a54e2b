"""`python -m evomerge report results/<run>`: plots and a markdown summary of a search run.

Writes, in the run directory: history.png (fitness per candidate and best so far),
genome.png (per-layer-group heatmap of the best genome's parameters) and report.md.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evomerge.cli_args import make_parser
from evomerge.genome.ps import split_coordinate
from evomerge.search.budget import counted
from evomerge.search.config import DFSSpec, PSSpec
from evomerge.search.front import front_table, plot_front
from evomerge.search.run_files import load_run_study, read_run
from evomerge.search.scoring_policy import RESCORED, WINNER
from evomerge.search.study import best_trial
from evomerge.search.trial_record import TIMES, TrialRecord, primary_value


def open_run(run_dir: Path) -> optuna.Study:
    """The run's study, from the storage its config.yaml names (default: its study.db), read
    and checked as the search reads them; never creates a database."""
    return load_run_study(read_run(run_dir))


def candidate_seconds(trials: list[FrozenTrial]) -> float:
    """Seconds spent on candidates that were scored or failed as candidates.

    A trial abandoned by a killed worker (failed later by the heartbeat check) is left out: its
    start-to-fail span is the downtime, not the candidate's time.
    """
    return sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None
        and t.datetime_start is not None
        and (t.state == TrialState.COMPLETE or TrialRecord.of(t).failed)
    )


def plot_history(trials: list[FrozenTrial], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(
        [t.number for t in done],
        [primary_value(t) or 0.0 for t in done],
        s=10,
        alpha=0.5,
        label="candidate",
    )
    best, xs, ys = float("-inf"), [], []
    for t in done:
        best = max(best, primary_value(t) or float("-inf"))
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    failed = [t.number for t in trials if TrialRecord.of(t).failed]
    if failed:
        ax.scatter(
            failed, [min(ys, default=0)] * len(failed), marker="x", color="k", label="failed"
        )
    ax.set_xlabel("trial")
    ax.set_ylabel("fitness")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def genome_table(
    params: dict[str, float], ranges: dict[str, tuple[float, float]]
) -> dict[str, dict[str, tuple[float, float]]] | None:
    """PS coordinates `<group>.<model>.<parameter>` ->
    {"<model> <parameter>": {group: (box value, parameter value)}}; None for other spaces."""
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for name, u in params.items():
        parts = split_coordinate(name)
        if parts is None or parts[2] not in ranges:
            return None
        group, model, parameter = parts
        lo, hi = ranges[parameter]
        rows.setdefault(f"{model} {parameter}", {})[group] = (u, lo + u * (hi - lo))
    return rows or None


def plot_genome(rows: dict[str, dict[str, tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(next(iter(rows.values())))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups)), 0.5 * len(rows) + 1.5))
    im = ax.imshow(
        [[r[g][0] for g in groups] for r in rows.values()],
        cmap="viridis",
        vmin=0,
        vmax=1,
        aspect="auto",
    )
    ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), list(rows))
    for i, r in enumerate(rows.values()):
        for j, g in enumerate(groups):
            ax.text(
                j,
                i,
                f"{r[g][1]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if r[g][0] < 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, label="share of the parameter's range")
    ax.set_title("best genome")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def overhead_share(trials: list[FrozenTrial]) -> float | None:
    """Share of the scored candidates' time spent outside the model's generation/scoring
    calls; None before any candidate recorded its generation time."""
    rows = [times for t in trials if (times := TrialRecord.of(t).times) is not None]
    total = sum(merge + swap + ev for merge, swap, ev, _ in rows)
    if not rows or total <= 0:
        return None
    return 1.0 - sum(gen for *_, gen in rows) / total


def generation_cost(trials: list[FrozenTrial], study: optuna.Study) -> list[str]:
    """The search's generation cost: fitness documents and tokens the candidates generated,
    how many were estimated or stopped by racing, and the documents spent re-scoring
    finalists on the whole fitness split."""
    records = [TrialRecord.of(t) for t in trials]
    if all(r.items is None for r in records):
        return []  # a run from before per-trial accounting
    items = sum(r.items or 0 for r in records)
    tokens = sum(r.tokens for r in records)
    estimated = sum(r.estimated for r in records)
    raced = sum(r.raced for r in records)
    lines = [
        f"- generation cost: {items} fitness documents, {tokens} tokens generated by the "
        f"candidates ({estimated} estimated, {raced} stopped early by racing)"
    ]
    rescored = study.user_attrs.get(RESCORED) or {}
    if rescored:
        extra = sum(int(v["items"]) for v in rescored.values())
        number, best = max(rescored.items(), key=lambda kv: kv[1]["fitness"])
        lines.append(
            f"- finalists re-scored on the full fitness split: {len(rescored)} ({extra} "
            f"documents); best full-split fitness {best['fitness']:.4f} (trial {number})"
        )
    return lines


def run_winner(study: optuna.Study, trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The run's answer: where fitness was estimated, the finalist best on the full fitness
    split (chosen when the run finished); otherwise the best trial."""
    chosen = study.user_attrs.get(WINNER)
    found = [t for t in trials if chosen is not None and t.number == chosen["trial"]]
    return found[0] if found else best_trial(study)


def summary_markdown(run_dir: Path, study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    best = run_winner(study, trials)
    lines = [f"# Search run `{run_dir.name}`", ""]
    lines += timing_lines(trials)
    lines += generation_cost(trials, study)
    if best is not None:
        lines += best_lines(study, trials, best)
    lines += failure_lines(trials)
    if len(study.directions) > 1:
        lines += front_table(study)
    lines += ["", "![history](history.png)"]
    if (run_dir / "genome.png").is_file():
        lines.append("![best genome](genome.png)")
    return "\n".join(lines) + "\n"


def timing_lines(trials: list[FrozenTrial]) -> list[str]:
    """Candidates counted, the median seconds of each step, the share outside generation."""
    n_done = sum(t.state == TrialState.COMPLETE for t in trials)
    records = [TrialRecord.of(t) for t in trials]
    n_failed = sum(r.failed for r in records)
    lines = [
        f"- candidates: {sum(counted(t) for t in trials)} ({n_done} scored, {n_failed} failed)"
    ]
    for key in TIMES:
        vals = [v for r in records if (v := getattr(r, key)) is not None]
        if vals:
            lines.append(
                f"- median {key[:-2]} seconds per candidate: {statistics.median(vals):.3f}"
            )
    share = overhead_share(trials)
    if share is not None:
        lines.append(
            f"- time outside generation/scoring (merge, swap, lm-eval bookkeeping): {share:.1%}"
        )
    return lines


def best_lines(study: optuna.Study, trials: list[FrozenTrial], best: FrozenTrial) -> list[str]:
    """The winner (with its full-split fitness where it was estimated), its held-out test
    scores, and the top five candidates."""
    value = primary_value(best) or 0.0
    told = f"fitness {value:.4f}"
    if TrialRecord.of(best).estimated:
        full = (study.user_attrs.get(WINNER) or {}).get("fitness")
        told = (
            f"estimated {told}"
            if full is None
            else f"fitness {full:.4f} on the full split (estimate {value:.4f})"
        )
    lines = [f"- best: trial {best.number}, {told}"]
    test = study.user_attrs.get("test_results") or {}
    if test.get("trial") == best.number:
        lines.append(f"- best on the held-out test tasks: `{json.dumps(test['results'])}`")
    top = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: -(primary_value(t) or 0),
    )[:5]
    lines += ["", "| trial | fitness | metrics |", "|---|---|---|"]
    lines += [
        f"| {t.number} | {primary_value(t) or 0.0:.4f} | "
        f"`{json.dumps(TrialRecord.of(t).metrics)}` |"
        for t in top
    ]
    return lines


def failure_lines(trials: list[FrozenTrial]) -> list[str]:
    failures: dict[str, int] = {}
    for t in trials:
        failure = TrialRecord.of(t).failure
        if failure is not None:
            reason = failure.split(":")[0]
            failures[reason] = failures.get(reason, 0) + 1
    if not failures:
        return []
    counts = ", ".join(f"{k} {v}" for k, v in sorted(failures.items()))
    return ["", f"Failed candidates by reason: {counts}"]


def parameter_ranges(space: PSSpec | DFSSpec) -> dict[str, tuple[float, float]]:
    if not isinstance(space, PSSpec):
        return {"weight": (0.0, 1.0), "density": (0.0, 1.0)}
    return {"weight": space.weight_range, "density": space.density_range}


def write_report(run_dir: Path) -> dict[str, Any]:
    run = read_run(run_dir)
    study = load_run_study(run)
    trials = study.get_trials(deepcopy=False)
    plot_history(trials, run_dir / "history.png")
    best = run_winner(study, trials)
    ranges = parameter_ranges(run.cfg.space)
    rows = genome_table(best.params, ranges) if best is not None else None
    if rows:
        plot_genome(rows, run_dir / "genome.png")
    if len(study.directions) > 1:
        plot_front(study, run_dir / "front.png")
    (run_dir / "report.md").write_text(summary_markdown(run_dir, study))
    return {"report": str(run_dir / "report.md"), "trials": len(trials)}


def main(argv: Sequence[str]) -> int:
    p = make_parser("python -m evomerge report", __doc__)
    p.add_argument("run_dir", type=Path, help="a search run directory, e.g. results/<run>")
    args = p.parse_args(list(argv))
    out = write_report(args.run_dir)
    print(f"wrote {out['report']} ({out['trials']} trials)")
    return 0
