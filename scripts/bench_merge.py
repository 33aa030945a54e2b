"""Merge speed and memory, evomerge against mergekit 0.1.5 (`mergekit-yaml`, CPU), one run.

    python scripts/bench_merge.py [--params 0.5e9] [--repetitions 3] [--threads 1 2]
        [--methods linear ties ...] [--cache ~/.cache/evomerge/bench-merge] [--json FILE]

Generates (once, cached) three same-architecture Llama checkpoints of about --params parameters
(bf16, 500 MB shards): a base and two fine-tunes. Runs linear, task_arithmetic, ties,
dare_ties and slerp through `python -m evomerge merge --threads T` and `mergekit-yaml --no-cuda
--num-threads T --async-write --write-threads T --random-seed 0 --quiet` (mergekit's fastest
CPU flags; defaults otherwise: one output shard at this size), interleaved by method, thread
count and tool, each run in a child process with OMP_NUM_THREADS=MKL_NUM_THREADS=T. Also times
the floor: read all inputs and write one output of the same size with plain safetensors.
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
        f"{'method':16s} {'evomerge s':>10s} {'mergekit s':>10s} {'speedup':>8s} "
        f"{'evo MB':>8s} {'mk MB':>8s} {'x floor':>8s} {'max|diff|':>10s}"
    )
    for method, row in out["methods"].items():
        evo, mk = row["evomerge"], row["mergekit"]
        print(
            f"{method:16s} {evo['median_wall_s']:10.1f} {mk['median_wall_s']:10.1f} "
            f"{row['speedup']:8.2f} {evo['median_peak_rss_mb']:8.0f} "
            f"{mk['median_peak_rss_mb']:8.0f} {row['vs_floor']:8.2f} {row['max_abs_diff']:10.2e}"
        )
    fl = out["floor"]
    print(
        f"{'floor':16s} {fl['median_wall_s']:10.1f} {'':>10s} {'':>8s} {fl['median_peak_rss_mb']:8.0f}"
    )


if __name__ == "__main__":
    main()
