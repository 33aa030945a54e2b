"""`python -m evomerge {search,merge,eval,export,report,dashboard,toy} ...`

Each subcommand lives in its own module with a `main(argv) -> int`; this file only dispatches,
and turns an EvomergeError (or a refusal of the file system, an OSError) into a one-line
message and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys

# numpy's OpenBLAS on one thread, set before numpy loads: its only work here is the samplers'
# small CMA-ES matrices, and its idle threads spin after each call, slowing the CPU merge that
# follows (toy search: 24 ms -> 12 ms per merge on 2 cores). torch keeps its own threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# torch's OpenMP threads sleep while they wait for work instead of spinning, set before torch
# loads. Spinning threads wait for each other, which on a busy machine costs a core-share each:
# with one other CPU-bound process on 2 cores, the toy build once ran 25x slower (0.15 against
# about 4 steps/s). Measured side by side on a quiet machine, passive waits cost the idle build
# about 20% and gave it 1.1-1.7 steps/s beside such a process against 0.85-1.1 spinning
# (results/history.md, "A busy machine"; the search itself runs on one thread on the toy).
# The wait policy changes no result (the toy family's bytes are the same; tests/toy).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch's CPU allocator asks for transparent huge pages (madvise) for tensors of 2 MB and more.
# A merge allocates and frees tensors of up to a few hundred MB per weight; each comes back from
# the kernel as fresh 4 KB pages, faulted and zeroed one at a time: at 0.5B, dare_ties to disk
# took 32-34 s without huge pages and 22-27 s with them (results/history.md, "Merges to disk").
# Where the kernel's THP setting is "never", nothing changes; no arithmetic changes anywhere.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from evomerge.errors import EvomergeError, one_line
from evomerge.kernels import pin_for_this_process

COMMANDS = {
    "search": ("evomerge.search.cli", "run a recipe search (Hydra overrides: task=... models=...)"),
    "merge": ("evomerge.merge.cli", "merge a recipe YAML into a Hugging Face checkpoint"),
    "eval": ("evomerge.evaluate.cli", "score a model directory or recipe on tasks"),
    "export": ("evomerge.search.export", "materialize a search run's best recipe or any trial"),
    "report": ("evomerge.search.report", "plots and a markdown summary of a search run"),
    "dashboard": ("evomerge.search.dashboard", "serve a search run's study in optuna-dashboard"),
    "toy": ("evomerge.toy.cli", "build the embedded toy model family"),
}


def runs_on_the_toy(name: str, args: list[str]) -> bool:
    """True for a search on the toy family (the default `models=toy`) or an eval of a toy model."""
    if name == "search":
        models = [a.partition("=")[2] for a in args if a.startswith("models=")]
        return not models or models[-1] == "toy"
    return name == "eval" and any("toy:" in a for a in args)


def usage() -> str:
    lines = ["usage: python -m evomerge COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:8s} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"evomerge: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if runs_on_the_toy(name, rest):
        # The toy's scores follow the CPU's kernels as its bytes do (evomerge/kernels.py): with
        # the build's pins, a search on the toy gives the same candidates and fitnesses on every
        # x86-64 machine with AVX2. Set before torch loads; a user's own settings win.
        pin_for_this_process()
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except EvomergeError as e:
        print(f"evomerge {name}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (no space, read-only, permissions, ...)
        where = f"{e.filename}: " if e.filename else ""
        print(f"evomerge {name}: error: {one_line(f'{where}{e.strerror or e}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"evomerge {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
