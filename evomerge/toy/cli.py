"""`python -m evomerge toy [--out DIR] [--size full|small] [--threads N]`

Builds the toy model family (into DIR, or into the cache when DIR is not given) and prints
each model's scores on the target task and on the specialists' probes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evomerge.cli_args import make_parser
from evomerge.toy.build import ToyFamily, build_family, ensure_family
from evomerge.toy.family import SIZES


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = make_parser("python -m evomerge toy", __doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="build into this new directory (default: the cache)")
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="default: full")
    p.add_argument(
        "--threads",
        type=_threads,
        help="torch threads for training (default: the size's own, 2 for full, so that every "
        "machine builds the same bytes)",
    )
    return p.parse_args(argv)


# The most torch threads a toy build may use: the family's bytes depend on the thread count, so
# a machine may build with more threads than it has cores to reproduce another's bytes; past
# this, threads only cost stacks (100,000 of them cannot start).
MAX_TOY_THREADS = 256


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text[:40]!r}") from None
    if not 1 <= n <= MAX_TOY_THREADS:
        raise argparse.ArgumentTypeError(
            f"must be in [1, {MAX_TOY_THREADS}] (MAX_TOY_THREADS), got {n}"
        )
    return n


def summary(family: ToyFamily) -> str:
    """A table: one row per model, one column per task, accuracy in percent."""
    scores = family.probe_scores
    tasks = list(dict.fromkeys(t for s in scores.values() for t in s))
    lines = [f"{'model':10s} " + " ".join(f"{t:>12s}" for t in tasks)]
    for name, row in scores.items():
        cells = " ".join(f"{100 * row[t]:12.1f}" if t in row else f"{'':12s}" for t in tasks)
        lines.append(f"{name:10s} {cells}")
    took = family.manifest["build_seconds"]
    lines.append(f"built in {took:.0f} s with {family.manifest['threads']} threads: {family.root}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.out is not None:
        family = build_family(args.out, args.size, threads=args.threads, progress=True)
    else:
        family = ensure_family(args.size, threads=args.threads)
    print(summary(family))
    return 0
