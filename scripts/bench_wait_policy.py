"""OpenMP wait policies and search thread counts side by side, idle and beside one CPU-bound
process: the toy build's steps per second and the default search's seconds per candidate.

    python scripts/bench_wait_policy.py [--tree PATH] [--work DIR] [--json FILE]

Uses scripts/bench_busy_machine.py's child (the first steps of the full toy family's base, as
the build trains them) and its small-toy-family search, with each setting in turn:

- policies, for the build (2 threads) and a 2-thread search: OpenMP's default wait (spinning;
  `OMP_WAIT_POLICY` set empty, so evomerge's default does not apply), passive, and the default
  with `GOMP_SPINCOUNT` 10,000 and 100,000;
- search thread counts: `threads=1` with the passive and the default wait.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import bench_busy_machine as busy

POLICIES = {
    "default-spin": {"OMP_WAIT_POLICY": ""},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin10k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "spin100k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "100000"},
}
SEARCHES: tuple[tuple[str, list[str], dict[str, str]], ...] = (
    ("2t-default-spin", [], {"OMP_WAIT_POLICY": ""}),
    ("2t-passive", [], {}),
    ("1t-passive", ["threads=1"], {}),
    ("1t-default-spin", ["threads=1"], {"OMP_WAIT_POLICY": ""}),
)


def search_s(tree: str, work: Path, run: str, extra: list[str], env_extra: dict[str, str]) -> float:
    """Median seconds per candidate of a 10-candidate search on the small toy family."""
    runs = work / "runs"
    shutil.rmtree(runs / run, ignore_errors=True)
    cmd = [sys.executable, "-m", "evomerge", "search", "models.toy_size=small", f"run={run}"]
    cmd += [f"results_dir={runs}", "optimizer.n_trials=10", "score_test=false", *extra]
    env = busy._env(tree, work)
    env.update(env_extra)
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
    with sqlite3.connect(runs / run / "study.db") as db:
        rows = db.execute(
            "SELECT (julianday(datetime_complete) - julianday(datetime_start)) * 86400 "
            "FROM trials WHERE state = 'COMPLETE'"
        ).fetchall()
    return statistics.median(r[0] for r in rows)


def build_steps(tree: str, work: Path, env_extra: dict[str, str]) -> dict[str, Any]:
    plain = busy._env

    def env(tree: str, work: Path) -> dict[str, str]:
        return {**plain(tree, work), **env_extra}

    busy._env = env
    try:
        return busy.build_steps(tree, work, 10)
    finally:
        busy._env = plain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--work", type=Path, default=Path("/tmp/evomerge-wait-policy"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    rows = []
    for loaded in (False, True):
        for name, extra in POLICIES.items():
            with busy.load(loaded):
                build = build_steps(args.tree, args.work, extra)
            row = {"busy": loaded, "policy": name, "build_steps_per_s": build["steps_per_s"]}
            row["sha256"] = build["sha256"]
            print(json.dumps(row), flush=True)
            rows.append(row)
        for name, extra_args, env_extra in SEARCHES:
            with busy.load(loaded):
                seconds = search_s(
                    args.tree, args.work, f"{name}-{int(loaded)}", extra_args, env_extra
                )
            row = {"busy": loaded, "search": name, "s_per_candidate": seconds}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
