"""Does the toy family's story hold at every draw of its seeds? One row per draw.

    python scripts/toy_draws.py --draws 0 1 2 3 4 [--root results/toy-draws] [--trials 300]
        [--size full|small]

For each draw k of the recipe's (initialization, data) seeds (evomerge/toy/family.py):
1. the family, built with the kernels pinned: `python -m evomerge toy --out ROOT/families/draw-k
   --draw k` (each specialist's score on its own probe's test split and both parents' scores on
   the target's test split come from its family.json);
2. the coarse uniform grid of `space.x0=grid` (18 dare_ties points: weight 0.5 / 1.0 / 1.5 per
   source, density 0.5 / 1.0): a search that scores only the grid on the fitness split, then
   every grid point exported and scored on the target's test split;
3. the default PS search (`--trials` candidates, seed 0), its winner scored on the test split.
Every step runs the product's own commands in child processes and is skipped when its output
exists, so an interrupted run resumes where it stopped. Writes ROOT/draws.json and prints a
markdown table with the goals of the toy's story (specialists >= 85 on their probes, parents <=
15 on the target, grid's best >= best parent + 20, search's winner >= grid's best + 5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from evomerge.kernels import PINNED_KERNELS, cpu_runs_pinned_kernels  # noqa: E402

TARGET = "toy_mgsm_ja"
GRID_POINTS = 18  # evomerge/search/warmstart.py: 3 weights ^ 2 sources x 2 densities
SPECIALIST_MIN, PARENT_MAX, GRID_GAIN, SEARCH_GAIN = 85.0, 15.0, 20.0, 5.0  # the story's goals


def run(cmd: list[str], log: Path) -> None:
    """One product command, with the toy's kernel pins (evals of a draw's directories are not
    recognised as the toy by the command line); its output goes to `log`; a failure stops the
    script."""
    pins = PINNED_KERNELS if cpu_runs_pinned_kernels() else {}
    env = {**os.environ, **pins, "TQDM_DISABLE": "1"}
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def family(root: Path, draw: int, size: str, log: Path) -> dict[str, Any]:
    out = root / "families" / f"draw-{draw}"
    if not (out / "family.json").is_file():
        cmd = [sys.executable, "-m", "evomerge", "toy", "--out", str(out), "--draw", str(draw)]
        run([*cmd, "--size", size], log)
    return dict(json.loads((out / "family.json").read_text()))


def models_overrides(root: Path, draw: int) -> list[str]:
    fam = root / "families" / f"draw-{draw}"
    return [
        f"models.base_model={fam / 'base'}",
        f"models.sources.math_en={fam / 'math_en'}",
        f"models.sources.lang_ja={fam / 'lang_ja'}",
    ]


def search(root: Path, draw: int, run_name: str, extra: list[str], log: Path) -> Path:
    run_dir = root / "runs" / run_name
    if not (run_dir / "summary.json").is_file():
        cmd = [sys.executable, "-m", "evomerge", "search", f"run={run_name}", "seed=0"]
        cmd += [f"results_dir={root / 'runs'}", *models_overrides(root, draw), *extra]
        run(cmd, log)
    return run_dir


def test_score(model: str, out: Path, log: Path) -> float:
    """acc on the target's test split, in percent (cached in `out`)."""
    if not out.is_file():
        cmd = [sys.executable, "-m", "evomerge", "eval", f"model={model}", f"task={TARGET}"]
        run([*cmd, f"output={out}"], log)
    data = json.loads(out.read_text())
    results = data.get("results", data)
    return 100 * float(results[TARGET]["acc"])


def grid(root: Path, draw: int, log: Path) -> dict[str, float]:
    """Grid point (trial number) -> its test score."""
    run_dir = search(
        root,
        draw,
        f"grid-{draw}",
        ["space.x0=grid", f"optimizer.n_trials={GRID_POINTS}", "score_test=false"],
        log,
    )
    scores = {}
    for trial in range(GRID_POINTS):
        out, model = run_dir / f"trial_{trial}_test.json", run_dir / f"trial_{trial}_model"
        if not out.is_file():
            shutil.rmtree(model, ignore_errors=True)
            run(
                [sys.executable, "-m", "evomerge", "export", str(run_dir), "--trial", str(trial)],
                log,
            )
        scores[str(trial)] = test_score(str(model), out, log)
        shutil.rmtree(model, ignore_errors=True)
    return scores


def row(root: Path, draw: int, trials: int, size: str) -> dict[str, Any]:
    log = root / f"draw-{draw}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    manifest = family(root, draw, size, log)
    models = manifest["models"]
    probes = {n: 100 * m["scores"][m["probe"]] for n, m in models.items() if "probe" in m}
    parents = {n: 100 * m["scores"][TARGET] for n, m in models.items() if "probe" in m}
    grid_scores = grid(root, draw, log)
    ps = search(root, draw, f"ps-{draw}", [f"optimizer.n_trials={trials}"], log)
    summary = json.loads((ps / "summary.json").read_text())
    return {
        "draw": draw,
        "seeds": [manifest["config"]["seed"], manifest["config"]["data_seed"]],
        "probes": probes,
        "parents": parents,
        "grid": grid_scores,
        "grid_best": max(grid_scores.values()),
        "search": 100 * summary["test_metrics"][TARGET]["acc"],
        "trials": summary["trials"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| draw (init / data seed) | math_en probe | lang_ja probe | math_en on target | "
        "lang_ja on target | grid's best | gain | PS search | over grid | goals met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        best_parent = max(r["parents"].values())
        gain, over = r["grid_best"] - best_parent, r["search"] - r["grid_best"]
        met = (
            min(r["probes"].values()) >= SPECIALIST_MIN
            and best_parent <= PARENT_MAX
            and gain >= GRID_GAIN
            and over >= SEARCH_GAIN
        )
        seeds = "/".join(map(str, r["seeds"]))
        lines.append(
            f"| {r['draw']} ({seeds}) | {r['probes']['math_en']:.1f} | {r['probes']['lang_ja']:.1f}"
            f" | {r['parents']['math_en']:.1f} | {r['parents']['lang_ja']:.1f} | "
            f"{r['grid_best']:.1f} | {gain:+.1f} | {r['search']:.1f} | {over:+.1f} | "
            f"{'yes' if met else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--root", type=Path, default=REPO / "results" / "toy-draws")
    p.add_argument("--trials", type=int, default=300, help="candidates of the PS search")
    p.add_argument("--size", default="full", choices=["full", "small"])
    args = p.parse_args()
    rows = [row(args.root.resolve(), d, args.trials, args.size) for d in args.draws]
    (args.root / "draws.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
