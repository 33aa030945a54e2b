"""Try mergekit-evolve 0.1.5 on our toy family and task (the peer of scripts/bench_search.py).

    python scripts/bench_mergekit_evolve.py [--size small] [--task toy_mgsm_ja_fit]
        [--fevals 4] [--timeout 300] [--stages as_installed vllm_stub fake_gpu] [--json FILE]

Needs `ray` (pip install ray; not a dependency of evomerge). Prints, per stage, the exit code
and the tail of the output; see evomerge_dev/bench/evolve_peer.py for what each stage changes.
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
from evomerge.toy import ensure_family
from evomerge_dev.bench.evolve_peer import STAGES, attempt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="small", help="toy family size (small, full)")
    p.add_argument("--task", default="toy_mgsm_ja_fit")
    p.add_argument("--tasks-dir", type=Path, default=Path(__file__).parents[1] / "tasks")
    p.add_argument("--fevals", type=int, default=4)
    p.add_argument("--limit", type=int, default=None, help="lm-eval documents per task")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    family = ensure_family(args.size)
    results = []
    with tempfile.TemporaryDirectory(prefix="mergekit-evolve-") as work:
        for stage in args.stages:
            r = attempt(
                stage,
                Path(work),
                family.root,
                args.tasks_dir.resolve(),
                task=args.task,
                fevals=args.fevals,
                limit=args.limit,
                timeout_s=args.timeout,
                threads=args.threads,
            )
            results.append(r)
            status = "timed out" if r["timed_out"] else f"exit {r['returncode']}"
            print(f"== {stage}: {status} after {r['seconds']:.0f} s")
            print("\n".join(r["output_tail"]))
    out = {
        "family": str(family.root),
        "task": args.task,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": "python scripts/bench_mergekit_evolve.py",
        "stages": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
