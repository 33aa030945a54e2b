"""`python -m evomerge toy [--out DIR] [--size full|small] [--threads N] [--draw K] [--verify]`

Without --out: the family the search uses (the shipped one, else the cached build, else a new
build into the cache). With --out: a new build into DIR. Builds run in a child process with
the CPU kernels pinned (evomerge/kernels.py), so every x86-64 machine with AVX2 builds the
same bytes. --verify rebuilds in a scratch directory and says whether this machine reproduces
the recorded bytes (exit 0 if it does, 1 if not). --draw K (with --out) builds draw K of the
recipe's (initialization, data) seeds. Prints each model's scores on the target task and on the
specialists' probes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evomerge.cli_args import make_parser
from evomerge.errors import UsageError
from evomerge.toy.build import ToyFamily, build_family_pinned
from evomerge.toy.family import SIZES
from evomerge.toy.store import ensure_family, verify_build


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = make_parser("python -m evomerge toy", __doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="build into this new directory (default: the cache)")
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="default: full")
    p.add_argument(
        "--threads",
        type=_threads,
        help="torch threads for training (default: the size's own, 2 for full)",
    )
    p.add_argument(
        "--draw",
        type=int,
        default=0,
        help="with --out: draw K of the recipe's seeds (default 0, the recipe as shipped)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="rebuild and compare with the recorded bytes (exit 1 if they differ)",
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
    if args.verify:
        verdict = verify_build(args.size, threads=args.threads)
        print("\n".join(verdict.lines()))
        return 0 if verdict.reproduced else 1
    if args.out is not None:
        family = build_family_pinned(
            args.out, args.size, threads=args.threads, progress=True, draw=args.draw
        )
    elif args.draw:
        raise UsageError("--draw needs --out: the cache holds draw 0, the recipe as shipped")
    else:
        family = ensure_family(args.size, threads=args.threads)
    print(summary(family))
    return 0
