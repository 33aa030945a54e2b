"""OUT_DIR of a merge: checked before any work, written in a hidden staging directory beside
it, and moved into place complete, or not at all.

The merge holds an exclusive flock on its staging directory for as long as it lives, and marks
the directory as a merge's (MARKER). The kernel drops the lock when the process ends, however it
ends (SIGKILL included), so a later merge into the same place that can take the lock on a
leftover directory that carries the marker (or is empty but for it: killed before marking it)
knows that its owner is dead, and removes it (holding the lock), saying so; a live merge's
directory, and a directory named alike that holds files but no marker (a user's own), are never
touched. A new directory is unlocked for an instant after its creation: a merge whose new
directory was taken for a leftover in that instant finds it locked or deleted once it holds the
lock, and makes another. At the end the files and the directory are fsynced, then renamed to
OUT_DIR in one step, then the parent is fsynced, so a power cut leaves either no OUT_DIR or a
complete one. A merge that fails removes its staging directory
and the parent directories it made for OUT_DIR (each only while empty)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from types import TracebackType

from evomerge.errors import MergeError

log = logging.getLogger(__name__)

# The file that marks a staging directory as a merge's: only directories that carry it (with
# this content) are ever removed as leftovers; a user's own `.<out>.<x>.partial/` is not ours.
MARKER = ".evomerge-staging"
MARKER_TEXT = b"a merge's staging directory; removed once its merge is dead\n"
# Tries at making a staging directory that no other merge removed before it was locked.
CREATE_TRIES = 5
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
        self._made: list[Path] = []  # parent directories this merge created, outermost first

    def __enter__(self) -> Path:
        out = self.out
        check_out_dir(out)
        try:
            self._made = make_parents(out)
        except OSError as e:
            raise MergeError(f"{out}: cannot create its parent directory: {e.strerror}") from None
        remove_stale(out.parent, out.name)
        try:
            for _ in range(CREATE_TRIES):
                if self._create():
                    return self.path  # type: ignore[return-value]
        except OSError as e:
            self._discard()
            raise MergeError(
                f"{out.parent}: cannot write the merged model here: {e.strerror}"
            ) from None
        raise MergeError(f"{out.parent}: staging directories keep vanishing; is it shared?")

    def _create(self) -> bool:
        """Make and lock a staging directory; False when another merge removed it first."""
        path = Path(
            tempfile.mkdtemp(prefix=_prefix(self.out.name), suffix=self.suffix, dir=self.out.parent)
        )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a leftover remover holds it and will delete it
            return False
        if os.fstat(fd).st_nlink == 0:  # removed before we locked it
            os.close(fd)
            return False
        self.path, self._fd = path, fd
        marker = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        with os.fdopen(marker, "wb") as f:
            f.write(MARKER_TEXT)
        return True

    def commit(self) -> Path:
        """fsync everything written, rename it to OUT_DIR, fsync the parent."""
        assert self.path is not None  # entered
        try:
            _fsync_tree(self.path)
            if os.path.lexists(self.out):
                raise FileExistsError(errno.EEXIST, "exists")
            os.rename(self.path, self.out)
            os.unlink(MARKER, dir_fd=self._fd)  # the directory is OUT_DIR now
            _fsync(self.out)
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
        self._made = []  # they hold OUT_DIR now
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
        remove_made(self._made)
        self._made = []


def make_parents(path: Path) -> list[Path]:
    """Create `path`'s missing parent directories; returns those created, outermost first."""
    missing = []
    parent = path.parent
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_made(made: list[Path]) -> None:
    """Remove the directories a merge created (innermost first), each only if still empty."""
    for directory in reversed(made):
        try:
            directory.rmdir()
        except OSError:  # another process put something there: it is not ours to remove
            return


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
        if entry.endswith((".partial", ".stages")) and _remove_if_dead(parent / entry):
            log.warning("removed %s, left by a merge that was killed", parent / entry)
            removed.append(parent / entry)
    return removed


def _remove_if_dead(path: Path) -> bool:
    """Remove `path` if it carries a merge's marker and no live merge holds its lock (kept
    while removing); whether removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # its merge is alive
    try:
        if not _is_a_merges(fd):
            return False  # a user's own files: never ours to remove
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)  # drops the lock
    return True


def _is_a_merges(directory_fd: int) -> bool:
    """Whether the directory is a merge's: it carries the marker, or holds nothing but (part
    of) it, as when its merge was killed between making it and marking it."""
    entries = os.listdir(directory_fd)
    return set(entries) <= {MARKER} or _has_marker(directory_fd)


def _has_marker(directory_fd: int) -> bool:
    try:
        marker = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory_fd)
    except OSError:
        return False
    with os.fdopen(marker, "rb") as f:
        return (
            stat.S_ISREG(os.fstat(f.fileno()).st_mode)
            and f.read(len(MARKER_TEXT) + 1) == MARKER_TEXT
        )


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
