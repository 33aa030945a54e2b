"""`python -m evomerge merge RECIPE OUT_DIR [options]`: build options, merge the recipe file
(one document, or several stages in mergekit-multi's layout)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from evomerge.cli_args import make_parser
from evomerge.merge.execute import MergeOptions
from evomerge.merge.io import parse_size
from evomerge.merge.multistage import merge_recipe_file


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "python -m evomerge merge",
        "Merge a (mergekit-compatible) recipe YAML into a Hugging Face checkpoint.",
    )
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("out_dir", help="output directory (must not exist; created atomically)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="also read pickle (.bin) checkpoints"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="accepted for mergekit parity; only built-in Llama-family layouts are merged",
    )
    parser.add_argument(
        "--shard-size", default="5GB", help="max bytes per output shard, e.g. 5GB, 500MB"
    )
    parser.add_argument(
        "--random-seed", type=int, default=None, help="seed for DARE (overrides the recipe)"
    )
    parser.add_argument("--out-dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="torch threads for the arithmetic; reading ahead and writing take one more thread "
        "each (default: torch's, one per core)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--keep-intermediates",
        metavar="DIR",
        default=None,
        help="multi-stage recipes: keep each named stage's result in DIR/<name> "
        "(default: a temporary directory, removed at the end)",
    )
    return parser


def thread_count(text: str) -> int:
    """--threads: from 1 to the CPUs this process may use (more only adds threads that wait,
    and each costs a stack: 100,000 of them cannot start)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text[:40]!r}") from None
    if not 1 <= n <= cpus:
        raise argparse.ArgumentTypeError(f"must be in [1, {cpus}] (the CPUs available), got {n}")
    return n


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    options = MergeOptions(
        device=args.device,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        shard_size=parse_size(args.shard_size),
        random_seed=args.random_seed,
        out_dtype=args.out_dtype,
        progress=not args.no_progress,
        threads=args.threads,
    )
    out = merge_recipe_file(Path(args.recipe), args.out_dir, options, keep=args.keep_intermediates)
    print(f"merged model written to {out}")
    return 0
