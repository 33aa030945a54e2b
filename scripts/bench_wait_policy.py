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
from pathlib import Path

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
                build = busy.build_steps(args.tree, args.work, 10, env=extra)
            row = {"busy": loaded, "policy": name, "build_steps_per_s": build["steps_per_s"]}
            row["sha256"] = build["sha256"]
            print(json.dumps(row), flush=True)
            rows.append(row)
        for name, extra_args, env_extra in SEARCHES:
            with busy.load(loaded):
                run = f"{name}-{int(loaded)}"
                found = busy.search(args.tree, args.work, 10, run, extra_args, env_extra)
            seconds = found["median_candidate_s"]
            row = {"busy": loaded, "search": name, "s_per_candidate": seconds}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
