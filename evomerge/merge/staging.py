"""Where a merge writes before its output appears: a hidden staging directory beside OUT_DIR.

The merge holds an exclusive flock on its staging directory for as long as it lives. The
kernel drops the lock when the process ends, however it ends (SIGKILL included), so a later
merge into the same place that can take the lock on a leftover directory knows that its owner
is dead, and removes it, saying so; a live merge's directory is never touched. At the end the
files and the directory are fsynced, then renamed to OUT_DIR in one step, then the parent is
fsynced, so a power cut leaves either no OUT_DIR or a complete one.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

from evomerge.errors import MergeError

log = logging.getLogger(__name__)

# A leftover is removed only once unchanged for this long: a new staging directory exists for
# an instant before its merge locks it, and a merge that is alive holds its lock.
STALE_AFTER_S = 60.0
# Characters of OUT_DIR's name kept in the staging directory's name: file names are limited to
# 255 bytes (NAME_MAX), and the staging name adds a dot, a random part and a suffix.
NAME_CHARS = 100
NAME_MAX = 255  # bytes in one file name on Linux file systems


class Staging:
    """`with Staging(out) as tmp: ...write into tmp...; staging.commit()` (see the module)."""

    def __init__(self, out: str | Path, suffix: str = ".partial"):
        self.out = Path(out)
        self.suffix = suffix
        self.path: Path | None = None
        self._fd: int | None = None

    def __enter__(self) -> Path:
        out = self.out
        check_out_dir(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MergeError(f"{out}: cannot create its parent directory: {e.strerror}") from None
        remove_stale(out.parent, out.name)
        try:
            self.path = Path(
                tempfile.mkdtemp(prefix=_prefix(out.name), suffix=self.suffix, dir=out.parent)
            )
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._discard()
            raise MergeError(
                f"{out.parent}: cannot write the merged model here: {e.strerror}"
            ) from None
        return self.path

    def commit(self) -> Path:
        """fsync everything written, rename it to OUT_DIR, fsync the parent."""
        assert self.path is not None  # entered
        try:
            _fsync_tree(self.path)
            if os.path.lexists(self.out):
                raise FileExistsError(errno.EEXIST, "exists")
            os.rename(self.path, self.out)
            _fsync(self.out.parent)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise MergeError(
                    f"{self.out}: was created by another process while this merge ran; "
                    "this merge's result is discarded"
                ) from None
            raise MergeError(
                f"{self.out}: cannot move the merged model into place: {e.strerror}"
            ) from None
        self.path = None
        return self.out

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._discard()
        if isinstance(error, OSError):  # a full disk, a file system gone read-only, ...
            where = f" ({error.filename})" if error.filename else ""
            raise MergeError(
                f"{self.out}: merge failed: {error.strerror or error}{where}"
            ) from None

    def _discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_out_dir(out: Path) -> None:
    """OUT_DIR must not exist in any form (a dangling symlink too) and must be a valid name."""
    if os.path.lexists(out):
        kind = "a symlink" if out.is_symlink() else "a directory" if out.is_dir() else "a file"
        raise MergeError(f"{out}: already exists ({kind}); choose a new OUT_DIR or remove it first")
    if len(os.fsencode(out.name)) > NAME_MAX:
        raise MergeError(f"{out.name[:40]}...: OUT_DIR's name is longer than {NAME_MAX} bytes")


def remove_stale(parent: Path, name: str) -> list[Path]:
    """Remove the staging directories for `name` in `parent` whose merge is dead; returns them."""
    prefix = _prefix(name)
    removed = []
    try:
        entries = [e for e in os.listdir(parent) if e.startswith(prefix)]
    except OSError:
        return []
    for entry in entries:
        if entry.endswith((".partial", ".stages")) and _is_stale(parent / entry):
            shutil.rmtree(parent / entry, ignore_errors=True)
            log.warning("removed %s, left by a merge that was killed", parent / entry)
            removed.append(parent / entry)
    return removed


def _is_stale(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its merge is alive
    finally:
        os.close(fd)  # also drops the lock just taken
    try:
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _prefix(name: str) -> str:
    return f".{name[:NAME_CHARS]}."


def _fsync_tree(path: Path) -> None:
    for directory, _, files in os.walk(path):
        for name in files:
            _fsync(Path(directory) / name)
        _fsync(Path(directory))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
