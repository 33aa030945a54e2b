"""Merge speed and memory, evomerge against mergekit 0.1.5 (`mergekit-yaml`, CPU), one run.

    python scripts/bench_merge.py [--params 0.5e9] [--repetitions 3] [--threads 1 2]
        [--methods linear ties ...] [--tree NAME=PATH ...] [--tie-rule mergekit|threshold]
        [--cache ~/.cache/evomerge/bench-merge] [--json FILE]

Generates (once, cached) three same-architecture Llama checkpoints of about --params parameters
(bf16, 500 MB shards): a base and two fine-tunes. Runs linear, task_arithmetic, ties,
dare_ties, slerp, della and breadcrumbs_ties through `python -m evomerge merge --threads T`
(once per source tree: `--tree NAME=PATH`, repeatable, e.g. a worktree of the commit before a
change; default: this tree) and `mergekit-yaml --no-cuda --num-threads T --async-write
--write-threads T --random-seed 0 --quiet` (mergekit's fastest CPU flags; defaults otherwise:
one output shard at this size), interleaved by method, thread count and tool, each run in a
child process with OMP_NUM_THREADS=MKL_NUM_THREADS=T. Seeded methods use `drop_scheme:
counter`; `--tie-rule` adds that `tie_rule` to the selecting methods' recipes of trees that
know the key (none: mergekit's rule, a plain recipe). Also times the floor, a whole process
with the merge's durability: start Python and torch, read all inputs once with plain
safetensors, write one output of the same size and fsync it. Per method and thread count:
seconds, x the floor, mergekit's seconds / these, peak RSS (MB), max |evomerge - mergekit|
(first tree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
from evomerge_dev.bench.checkpoints import config_for, generate_family, parameter_count
from evomerge_dev.bench.merge import METHODS, run_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", type=float, default=0.5e9)
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--hidden", type=int, default=2048, help="width (vocabulary 32000)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts")
    p.add_argument("--dtype", default="bfloat16", help="the recipes' dtype: key")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tree", action="append", default=[], help="NAME=PATH (repeatable)")
    p.add_argument("--tie-rule", choices=("mergekit", "threshold"), default=None)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache/evomerge/bench-merge")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    models = generate_family(args.cache, args.params, hidden=args.hidden)
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as work:
        out = run_benchmark(
            models,
            Path(work),
            methods=args.methods,
            repetitions=args.repetitions,
            threads=args.threads,
            dtype=args.dtype,
            trees={name: Path(path) for name, path in (t.split("=", 1) for t in args.tree)},
            tie_rule=args.tie_rule,
        )
    out["parameters"] = parameter_count(config_for(args.params, hidden=args.hidden))
    out["command"] = "python scripts/bench_merge.py " + " ".join(sys.argv[1:])
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
    print_table(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


def print_table(out: dict) -> None:
    print(
        f"\n{out['parameters'] / 1e9:.2f}B parameters x 3 models, {out['input_gb_each']:.2f} GB "
        f"each; recipe dtype {out['recipe_dtype']}; threads {out['threads']}; "
        f"median of {out['repetitions']}"
    )
    print(
        f"{'method':22s} {'tool':12s} {'seconds':>8s} {'x floor':>8s} {'mk/this':>8s} "
        f"{'peak MB':>8s} {'max|diff|':>10s}"
    )
    for method, row in out["methods"].items():
        for tool, runs in row.items():
            if not isinstance(runs, dict):
                continue
            ratio = runs.get("vs_mergekit")
            print(
                f"{method:22s} {tool:12s} {runs['median_wall_s']:8.2f} "
                f"{runs['median_wall_s'] / out['floor']['median_wall_s']:8.2f} "
                f"{'' if ratio is None else f'{ratio:.2f}':>8s} "
                f"{runs['median_peak_rss_mb']:8.0f} {row['max_abs_diff']:10.2e}"
            )
    fl = out["floor"]
    print(f"{'floor':22s} {'':12s} {fl['median_wall_s']:8.2f} {1:8.2f} {'':>8s} ", end="")
    print(f"{fl['median_peak_rss_mb']:8.0f}")


if __name__ == "__main__":
    main()
