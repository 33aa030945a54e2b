"""The embedded default on a busy machine: toy build steps and search candidates, idle and
beside one competing CPU-bound process, per source tree.

    python scripts/bench_busy_machine.py [--tree NAME=PATH ...] [--steps 20] [--candidates 12]
        [--work DIR] [--json FILE]

For each tree (`NAME=PATH`, a source tree of evomerge on PYTHONPATH; e.g. a worktree of an
earlier commit) and each load (idle; one `python -c 'while True: pass'` beside it), a child
started the way `python -m evomerge` starts (evomerge/__main__.py is imported before torch, so
its environment defaults apply) trains the first --steps steps of the full toy family's base
exactly as the build does (same model, data, schedule and thread count) and reports steps per
second (after the first step) and a SHA-256 of the weights; then `python -m evomerge search`
runs --candidates candidates on the small toy family (built into --work) and the median seconds
per candidate come from the study. Conditions are interleaved; the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class _Stop(Exception):
    pass


def child(steps: int) -> dict[str, Any]:
    import torch

    import evomerge.__main__  # noqa: F401  (as `python -m evomerge`: its env defaults first)
    from evomerge.toy.build import torch_threads
    from evomerge.toy.family import BASE_MIX, family_config, make_model, train

    cfg = family_config("full")
    times: list[float] = []

    def tick(_: float) -> None:
        times.append(time.perf_counter())
        if len(times) == steps:
            raise _Stop

    with torch_threads(cfg.threads):
        model = make_model(cfg)
        with contextlib.suppress(_Stop):
            train(
                model,
                BASE_MIX,
                steps=cfg.base_steps,
                lr=cfg.base_lr,
                cfg=cfg,
                seed=cfg.data_seed,
                on_step=tick,
            )
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return {
        "steps_per_s": (len(times) - 1) / (times[-1] - times[0]),
        "sha256": digest.hexdigest(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


@contextlib.contextmanager
def load(busy: bool) -> Iterator[None]:
    """One competing CPU-bound process while the block runs (when busy)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def _env(tree: str, work: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(PYTHONPATH=tree, EVOMERGE_CACHE=str(work / "cache"), TQDM_DISABLE="1")
    return {**env, **(extra or {})}


def build_steps(
    tree: str, work: Path, steps: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The child's figures; `env` adds to (or overrides) the child's environment."""
    cmd = [sys.executable, __file__, "--child", str(steps)]
    done = subprocess.run(
        cmd, env=_env(tree, work, env), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def search(
    tree: str,
    work: Path,
    candidates: int,
    run: str,
    overrides: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Median seconds per candidate of a default search (small toy family, no test scoring),
    with further Hydra `overrides` and `env` added to its environment if given."""
    runs = work / "runs"
    shutil.rmtree(runs / run, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "evomerge",
        "search",
        "models.toy_size=small",
        f"run={run}",
        f"results_dir={runs}",
        f"optimizer.n_trials={candidates}",
        "score_test=false",
        *(overrides or []),
    ]
    start = time.perf_counter()
    done = subprocess.run(
        cmd, env=_env(tree, work, env), capture_output=True, text=True, check=False, cwd=tree
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stderr[-3000:]}")
    with sqlite3.connect(runs / run / "study.db") as db:
        rows = db.execute(
            "SELECT (julianday(datetime_complete) - julianday(datetime_start)) * 86400 "
            "FROM trials WHERE state = 'COMPLETE'"
        ).fetchall()
    seconds = sorted(r[0] for r in rows)
    return {
        "median_candidate_s": statistics.median(seconds),
        "candidates": len(seconds),
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tree", action="append", default=[], help="NAME=PATH (repeatable)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--candidates", type=int, default=12)
    p.add_argument("--work", type=Path, default=Path("/tmp/evomerge-busy"))
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(Path(__file__).parents[1])}
    results: dict[str, Any] = {}
    for busy in (False, True):
        for name, tree in trees.items():
            label = f"{name} {'busy' if busy else 'idle'}"
            with load(busy):
                row: dict[str, Any] = {"load_before": os.getloadavg()[0]}
                row["build"] = build_steps(tree, args.work, args.steps)
                if not args.skip_search:
                    row["search"] = search(
                        tree, args.work, args.candidates, label.replace(" ", "-")
                    )
            results[label] = row
            print(label, json.dumps(row), flush=True)
    out = {
        "command": "python scripts/bench_busy_machine.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
