"""The toy build as a child process: `python -m evomerge.toy.child OUT SIZE THREADS ERRFILE
[--draw K] [--progress]`.

Run by `build.build_family_pinned` in an environment whose kernel choices are pinned
(evomerge/kernels.py): they must be set before torch loads, so the build cannot run in the
process that asked for it. A refused build writes its one-line message to ERRFILE and exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from evomerge.errors import EvomergeError, one_line


def main(argv: list[str]) -> int:
    out, size, threads, errfile = argv[:4]
    options = argv[4:]
    draw = int(options[options.index("--draw") + 1]) if "--draw" in options else 0
    from evomerge.toy.build import build_family  # after the pins: this loads torch

    try:
        build_family(
            Path(out), size, threads=int(threads), progress="--progress" in options, draw=draw
        )
    except EvomergeError as e:
        Path(errfile).write_text(one_line(str(e)) + "\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
