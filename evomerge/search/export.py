"""`python -m evomerge export results/<run> [--trial N] [--out DIR] [--device cpu|cuda]`:
materialize the run's best recipe (results/<run>/best_recipe.yaml), or the candidate of any
scored trial (e.g. a member of a multi-objective run's front), as a Hugging Face checkpoint
whose model card says where it came from (task, scores, candidates evaluated, sources, recipe,
version)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from evomerge.cli_args import make_parser
from evomerge.errors import SearchError
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.merge.card import render_card
from evomerge.recipe import Recipe, dump_recipe, load_recipe
from evomerge.search.outputs import genome_recipe
from evomerge.search.run_files import RunFiles, load_run_study, read_run, read_summary
from evomerge.search.space import build_space
from evomerge.search.trial_record import TrialRecord


def export_run(
    run_dir: Path, out: Path | None = None, *, device: str = "cpu", trial: int | None = None
) -> Path:
    """Merge the best recipe of a run, or trial `trial`'s, to `out` (default
    `<run_dir>/best_model` or `<run_dir>/trial_<N>_model`).

    The checkpoint is merged beside `out` and renamed into place with its card, so a failed
    export leaves nothing at `out`.
    """
    run = read_run(run_dir)
    summary = read_summary(run_dir)
    if trial is not None:
        scored = scored_trial(run, trial)
        recipe = trial_recipe(run, trial)
        summary = trial_summary(scored, summary)
        target = out or run_dir / f"trial_{trial}_model"
    else:
        recipe_path = run_dir / "best_recipe.yaml"
        if not recipe_path.is_file():
            raise SearchError(
                f"{run_dir}: no best_recipe.yaml; is this a search run directory with a "
                "completed candidate? (python -m evomerge search writes one)"
            )
        recipe = load_recipe(recipe_path)
        target = out or run_dir / "best_model"
    if target.exists():
        raise SearchError(f"{target}: already exists; choose a new --out or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
    try:
        merged = merge_to_disk(recipe, work / "model", MergeOptions(device=device))
        card = run_card(recipe, run.raw, summary)
        (merged / "README.md").write_text(card, encoding="utf-8")
        merged.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def trial_recipe(run: RunFiles | Path, number: int) -> Recipe:
    """The recipe of scored trial `number` of a run (its files, or its directory)."""
    run = read_run(run) if isinstance(run, Path) else run
    return genome_recipe(build_space(run.cfg), scored_trial(run, number))


def trial_summary(t: FrozenTrial, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The run's summary with trial `t`'s own scores (no held-out test: the run scored its
    best trial only)."""
    fitness = t.values[0] if len(t.values) == 1 else list(t.values)
    rec = TrialRecord.of(t)
    rest = {k: v for k, v in summary.items() if k != "test_metrics"}
    return rest | {
        "exported_trial": t.number,
        "fitness": fitness,
        "fitness_metrics": rec.metrics,
        "fitness_estimated": rec.estimated,  # from fewer documents
    }


def scored_trial(run: RunFiles, number: int) -> FrozenTrial:
    trials = load_run_study(run).get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        raise SearchError(
            f"--trial {number}: no such trial in {run.run_dir} (trials 0..{len(trials) - 1})"
        )
    t = found[0]
    if t.state != TrialState.COMPLETE:
        reason = TrialRecord.of(t).failure or ""
        raise SearchError(
            f"--trial {number}: the trial is {t.state.name}{f' ({reason[:60]})' if reason else ''}"
            "; only scored (COMPLETE) trials export"
        )
    return t


def run_card(recipe: Recipe, config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The exported winner's model card: the merge card plus the search that found it."""
    return render_card(
        models=recipe.referenced_models(),
        methods=[recipe.merge_method],
        intro="Found by an evolutionary search of merge recipes with evomerge "
        "(`python -m evomerge search`, after Akiba et al., 2024), then merged by "
        "`python -m evomerge export`. The recipe below reproduces it "
        "(`python -m evomerge merge recipe.yaml OUT_DIR`).",
        recipe_yaml=dump_recipe(recipe),
        sections=provenance(config, summary),
    )


def provenance(config: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, str]:
    """Card sections from the run's config.yaml and summary.json (whatever they hold)."""
    task, models = config.get("task") or {}, config.get("models") or {}
    space, optimizer = config.get("space") or {}, config.get("optimizer") or {}
    search = [
        f"- run: `{summary.get('run', config.get('run', '?'))}`",
        f"- task: `{task.get('name', '?')}`; fitness: "
        + ", ".join(
            f"{f.get('weight', 1.0)} x `{f.get('task')}` {f.get('metric')}"
            for f in task.get("fitness") or []
        ),
        f"- search space: `{space.get('kind', space.get('name', '?'))}`, merge method "
        f"`{space.get('method', '?')}`; optimizer `{optimizer.get('sampler', '?')}`",
        f"- candidates evaluated: {summary.get('trials', '?')} "
        f"({summary.get('failed', 0)} failed); best: trial {summary.get('best_trial', '?')}"
        + (
            f"; this model: trial {summary['exported_trial']}"
            if "exported_trial" in summary
            else ""
        ),
    ]
    sources = [f"- base model: `{models.get('base_model')}`"] if models.get("base_model") else []
    sources += [f"- `{name}`: `{ref}`" for name, ref in (models.get("sources") or {}).items()]
    if summary.get("estimator", "full") != "full":
        search.append(
            f"- fitness estimator: `{summary['estimator']}` (the winner re-scored in full)"
        )
    fitness = "fitness (estimated)" if summary.get("fitness_estimated") else "fitness"
    rows = _score_rows(fitness, summary.get("fitness_metrics"))
    rows += _score_rows("test (held out)", summary.get("test_metrics"))
    scores = "| split | task | metric | score |\n|---|---|---|---|\n" + "\n".join(rows)
    out = {"Search": "\n".join(search)}
    if rows:
        out["Scores"] = f"Fitness: {summary.get('fitness')!r}.\n\n{scores}"
    if sources:
        out["Base and sources (as configured)"] = "\n".join(sources)
    return out


def _score_rows(split: str, metrics: Any) -> list[str]:
    if not isinstance(metrics, Mapping):
        return []
    return [
        f"| {split} | `{task}` | {metric} | {value:.4g} |"
        for task, values in metrics.items()
        if isinstance(values, Mapping)
        for metric, value in values.items()
        if isinstance(value, int | float)
    ]


def main(argv: Sequence[str]) -> int:
    p = make_parser("python -m evomerge export", __doc__)
    p.add_argument("run_dir", type=Path, help="a search run directory, e.g. results/<run>")
    p.add_argument("--trial", type=int, default=None, help="export this trial (default: best)")
    p.add_argument("--out", type=Path, default=None, help="output directory (<run>/best_model)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(list(argv))
    out = export_run(args.run_dir, args.out, device=args.device, trial=args.trial)
    print(f"wrote {out}")
    return 0
