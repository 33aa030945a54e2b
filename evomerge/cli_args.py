"""Argument parsers for the subcommands: a usage error is one line, like every other error.

argparse prints the whole usage block and then the error, and exits 2 on its own. Here the
error becomes an `evomerge.errors.UsageError`, which `python -m evomerge` prints as one line
(`evomerge merge: error: ...`) with exit code 2, the same way as any bad input. `--help`
still prints the full usage and exits 0.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from evomerge.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def make_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser whose usage errors raise UsageError (one line) instead of exiting."""
    return _Parser(prog=prog, description=description)
