"""Search throughput: seconds per candidate in merge / weight swap / lm-eval / generation.

    python scripts/bench_search.py [--candidates 20] [search overrides, e.g. models.toy_size=small]

Runs the search's own scorer (same live model, tasks and source cache) on random genomes of
the configured space and prints a table; `--json FILE` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from evomerge.config import compose
from evomerge.search.config import search_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
from evomerge_dev.analysis.overhead import measure_overhead


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="search config overrides (Hydra syntax)")
    args = p.parse_args()
    cfg = search_config(compose("search", args.overrides))
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = measure_overhead(cfg, candidates=args.candidates)
    out["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    out["config"] = args.overrides
    width = max(map(len, out))
    for key, value in out.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:{width}s}  {shown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
