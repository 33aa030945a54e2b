"""Where a toy family comes from (shipped inside the package, else cached, else built), its
checksums, and the check that a machine rebuilds the same bytes.

A shipped family is a family directory (one model directory per member, `family.json`) under
`evomerge/toy/shipped/`, whose manifest also lists every file's SHA-256. It is data, not a
build step: `ensure_family` returns it without training anything, after checking every file
against its checksum. The build (`python -m evomerge toy`) stays the reproducible recipe behind
it; `python -m evomerge toy --verify` rebuilds with the kernels pinned and compares the weights
with the recorded checksums.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.files import sha256_file
from evomerge.kernels import pins_in_force
from evomerge.toy.build import (
    FAMILY_VERSION,
    MANIFEST,
    ToyFamily,
    build_family,
    build_family_pinned,
    default_cache_dir,
    family_dirname,
    load_family,
)

SHIPPED_ROOT = Path(__file__).parent / "shipped"
# What a clone and a wheel carry for the demo family: three float32 models of 2.9M parameters
# are 35 MB; a family over this belongs in a download or a build, not in the repository.
SHIPPED_BYTES_LIMIT = 40 * 2**20
WEIGHTS = "model.safetensors"
# The weights' SHA-256 of each size's pinned build, by FAMILY_VERSION: what `toy --verify`
# compares a rebuild with (config.json names the transformers version that wrote it, so only
# the weights are compared across machines).
REFERENCE = Path(__file__).parent / "reference.json"


def weight_hashes(family: ToyFamily) -> dict[str, str]:
    """member -> SHA-256 of its model.safetensors."""
    return {name: sha256_file(family.path(name) / WEIGHTS) for name in family.names}


def reference_hashes(size: str) -> dict[str, str] | None:
    """The recorded weights' SHA-256 of this FAMILY_VERSION's pinned build of `size`, if any."""
    if not REFERENCE.is_file():
        return None
    recorded = json.loads(REFERENCE.read_text()).get(f"v{FAMILY_VERSION}", {})
    hashes = recorded.get(size)
    return dict(hashes) if isinstance(hashes, dict) else None


def ship_family(family: ToyFamily, dest: Path | str) -> ToyFamily:
    """Copy `family` into `dest` (new) as a shipped family: its manifest lists every file's
    SHA-256. Refused over SHIPPED_BYTES_LIMIT."""
    dest = Path(dest)
    if dest.exists():
        raise ConfigError(f"{dest} already exists; remove it first")
    files = sorted(
        p.relative_to(family.root).as_posix()
        for name in family.names
        for p in (family.root / name).rglob("*")
        if p.is_file()
    )
    total = sum((family.root / f).stat().st_size for f in files)
    if total > SHIPPED_BYTES_LIMIT:
        raise ConfigError(
            f"toy family at {family.root}: {total / 2**20:.1f} MiB, over the "
            f"{SHIPPED_BYTES_LIMIT / 2**20:.0f} MiB a shipped family may take"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for f in files:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(family.root / f, tmp / f)
        manifest = dict(family.manifest, files={f: sha256_file(tmp / f) for f in files})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_family(dest)


def load_shipped(size: str, root: Path | None = None) -> ToyFamily | None:
    """The shipped family of `size` and this FAMILY_VERSION (under `root`, default
    SHIPPED_ROOT), every file checked; None if none is shipped. A file that does not match its
    checksum is a one-line error naming it."""
    root = SHIPPED_ROOT if root is None else root
    if not (root / MANIFEST).is_file():
        return None
    family = load_family(root)
    manifest = family.manifest
    if manifest.get("version") != FAMILY_VERSION or manifest.get("size") != size:
        return None
    files: dict[str, Any] = manifest.get("files") or {}
    if not files:
        raise ConfigError(f"{root / MANIFEST}: lists no files and their SHA-256")
    for rel, want in files.items():
        path = root / rel
        if not path.is_file():
            raise ConfigError(f"shipped toy family: {path} is missing; reinstall evomerge")
        got = sha256_file(path)
        if got != want:
            raise ConfigError(
                f"shipped toy family: {path} has SHA-256 {got[:16]}..., not the shipped "
                f"{want[:16]}...; reinstall evomerge (or build one: python -m evomerge toy --out DIR)"
            )
    return family


@dataclass(frozen=True)
class Verdict:
    """A rebuild's weights against the recorded ones, member by member."""

    size: str
    rebuilt: dict[str, str]
    recorded: dict[str, str]
    kernels: dict[str, Any]

    @property
    def reproduced(self) -> bool:
        return self.rebuilt == self.recorded

    def lines(self) -> list[str]:
        out = [
            f"{name:10s} {'same bytes' if self.recorded.get(name) == h else 'DIFFERENT bytes'}"
            f"  sha256 {h[:16]}..."
            for name, h in self.rebuilt.items()
        ]
        kernels = (
            f"(kernels: {self.kernels.get('capability')}, pinned: {self.kernels.get('pinned')})"
        )
        if self.reproduced:
            out.append(f"this machine reproduces the recorded toy family ({self.size}) {kernels}")
        else:
            out.append(
                f"this machine builds other bytes than the recorded toy family ({self.size}) "
                f"{kernels}; searches use the shipped family either way"
            )
        return out


def verify_build(size: str, *, threads: int | None = None, progress: bool = True) -> Verdict:
    """Rebuild `size` with the kernels pinned (in a scratch directory) and compare its weights
    with the recorded SHA-256."""
    recorded = reference_hashes(size)
    if recorded is None:
        raise ConfigError(
            f"toy family v{FAMILY_VERSION} ({size}): no recorded checksums to verify against"
        )
    with tempfile.TemporaryDirectory(prefix=".toy-verify-") as scratch:
        family = build_family_pinned(
            Path(scratch) / "family", size, threads=threads, progress=progress
        )
        return Verdict(size, weight_hashes(family), recorded, family.manifest["kernels"])


def ensure_family(
    size: str = "full",
    cache_dir: Path | str | None = None,
    threads: int | None = None,
    *,
    pinned: bool = True,
) -> ToyFamily:
    """The family of `size`: the one shipped with evomerge, else the cached build, else a new
    build (minutes for "full"; with the kernels pinned unless `pinned=False`).

    Cache: `cache_dir`, else `$EVOMERGE_CACHE`, else `~/.cache/evomerge`; the family lives in
    `toy-v{FAMILY_VERSION}-{size}/` there.
    """
    shipped = load_shipped(size)
    if shipped is not None:
        return shipped
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / family_dirname(size)
    if (target / MANIFEST).is_file():
        return load_family(target)
    build = build_family_pinned if pinned and not pins_in_force() else build_family
    try:
        return build(target, size, threads=threads, progress=True)
    except ConfigError:
        # another process finished the same build first
        if (target / MANIFEST).is_file():
            return load_family(target)
        raise
