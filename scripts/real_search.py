"""The real-model table: SmolLM2 base, each LoRA specialist, the coarse uniform grid's best and
the search's winner on the target's held-out test split, with seconds per candidate and the
search's peak RSS.

    TQDM_DISABLE=1 python scripts/real_search.py [--trials 120] [--run smollm2-ps]
        [--limit N] [--threads 2] [-- HYDRA_OVERRIDE ...]

Runs `python -m evomerge search models=smollm2 task=smol_add_words space=ps space.x0=grid
evaluator.apply_chat_template=true optimizer.n_trials=<trials> run=<run>` (dare_ties, CMA-ES
started at the grid's best; overrides after `--` are appended, e.g. space.method=ties) in a
child process, so its peak RSS is the child's alone; then scores the parents and the grid's
best (by fitness) on the test split here. Writes results/<run>/table.json and prints a
markdown table. Needs the adapters (scripts/train_adapters.py) and the real extra.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

from evomerge.evaluate.cli import run_eval
from evomerge.evaluate.settings import EvalSettings
from evomerge.model_ref import resolve_reference
from evomerge.recipe import dump_recipe
from evomerge.search.export import trial_recipe
from evomerge.search.warmstart import GRID_SIZE

REPO = Path(__file__).resolve().parents[1]
TARGET, FIT = "smol_add_words", "smol_add_words_fit"
OWN_TASK = {"add": "smol_add", "words": "smol_words"}  # each specialist's own skill
# Prompts are ~40 tokens with the chat template and answers ~12: 64 a batch keeps two cores
# busy (the evaluator's default).
BATCH = 64


def search(args: argparse.Namespace, overrides: list[str]) -> tuple[float, int]:
    """Run the search in a child; its wall seconds and peak RSS (bytes)."""
    command = [
        sys.executable,
        "-m",
        "evomerge",
        "search",
        "models=smollm2",
        f"task={TARGET}",
        "space=ps",
        "space.x0=grid",
        "evaluator.apply_chat_template=true",
        f"optimizer.n_trials={args.trials}",
        f"run={args.run}",
        f"threads={args.threads}",
    ]
    if args.limit is not None:
        command.append(f"evaluator.limit={args.limit}")
    start = time.perf_counter()
    subprocess.run([*command, *overrides], check=True, cwd=REPO)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    return time.perf_counter() - start, peak_kib * 1024


def grid_best(run_dir: Path) -> tuple[int, float]:
    """The grid trial with the highest fitness: (trial number, fitness)."""
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run_dir / 'study.db'}")
    size = int(study.user_attrs[GRID_SIZE])
    done = [t for t in study.trials[:size] if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(done, key=lambda t: float(t.value or 0.0))
    return best.number, float(best.value or 0.0)


def score(model: str, tasks: list[str], settings: EvalSettings) -> dict[str, Any]:
    """A directory, or a recipe (merged first), on `tasks`: {task: {metric: value}}."""
    return dict(run_eval(model, tasks, settings))


def one_source_recipe(name: str, source: str, folder: Path) -> str:
    """`BASE+ADAPTER` alone, as a recipe the evaluator merges (weight 1: the specialist)."""
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {"merge_method": "linear", "models": [{"model": source, "parameters": {"weight": 1.0}}]}
        )
    )
    return str(path)


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=120)  # >= 100 candidates (issue 30)
    parser.add_argument("--run", default="smollm2-ps")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (smoke)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    run_dir = REPO / "results" / args.run
    seconds, peak = search(args, overrides)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    settings = EvalSettings.from_dict(
        {"apply_chat_template": True, "batch_size": BATCH, "limit": args.limit}
    )
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="real-table-") as tmp:
        rows["base"] = score(
            resolve_reference(config["models"]["base_model"]),
            [TARGET, *OWN_TASK.values()],
            settings,
        )
        for name, ref in config["models"]["sources"].items():
            recipe = one_source_recipe(name, resolve_reference(ref), Path(tmp))
            rows[name] = score(recipe, [TARGET, *OWN_TASK.values()], settings)
        number, fitness = grid_best(run_dir)
        grid_file = Path(tmp) / "grid_best.yaml"
        grid_file.write_text(dump_recipe(trial_recipe(run_dir, number)))
        rows[f"grid best (trial {number}, fitness {fitness:.3f})"] = score(
            str(grid_file), [TARGET], settings
        )
    rows[f"search winner (trial {summary.get('best_trial')})"] = summary.get("test_metrics")
    table = {
        "run": args.run,
        "trials": summary.get("trials"),
        "search_seconds": round(seconds, 1),
        "candidate_seconds": summary.get("candidate_seconds"),
        "peak_rss_bytes": peak,
        "limit": args.limit,
        "overrides": overrides,
        "rows": rows,
    }
    (run_dir / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    print(markdown(table))


def markdown(table: dict[str, Any]) -> str:
    lines = [
        f"| model | {TARGET} acc | correct | in words | own skill acc |",
        "|---|---|---|---|---|",
    ]
    for name, results in table["rows"].items():
        t = (results or {}).get(TARGET, {})
        own = [
            f"{task} {results[task]['acc']:.3f}"
            for task in OWN_TASK.values()
            if task in (results or {})
        ]
        lines.append(
            f"| {name} | {t.get('acc', float('nan')):.3f} | "
            f"{t.get('correct', float('nan')):.3f} | {t.get('words', float('nan')):.3f} | "
            f"{', '.join(own)} |"
        )
    n = max(int(table["trials"] or 0), 1)
    lines.append(
        f"\n{table['trials']} candidates, {table['candidate_seconds']} s in candidates "
        f"({float(table['candidate_seconds'] or 0) / n:.1f} s each), search "
        f"{table['search_seconds']} s wall, peak RSS {table['peak_rss_bytes'] / 2**30:.2f} GiB"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
