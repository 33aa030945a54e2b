"""The shipped package is the product: every module imports without the dev extras, and the
dev-only code (evomerge_dev) stays out of the wheel."""

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import setuptools

import evomerge

ROOT = Path(__file__).resolve().parents[1]
# Packages that only the dev extra (or the checkout) provides.
DEV_ONLY = ("pytest", "hypothesis", "mergekit", "psycopg2", "evomerge_dev", "_pytest")


def shipped_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(evomerge.__path__, prefix="evomerge."))


def test_every_shipped_module_imports_without_dev_packages() -> None:
    # An import of a dev-only package made by evomerge's own code fails (third-party libraries
    # may probe for them: transformers looks for pytest and hypothesis).
    blocker = (
        "import builtins, importlib, sys\n"
        "real = builtins.__import__\n"
        "def guarded(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    importer = (globals or {}).get('__name__', '')\n"
        f"    if importer.split('.')[0] == 'evomerge' and name.split('.')[0] in {DEV_ONLY!r}:\n"
        "        raise ModuleNotFoundError(f'{importer} imports dev-only {name}')\n"
        "    return real(name, globals, locals, fromlist, level)\n"
        "builtins.__import__ = guarded\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print('imported', len(sys.argv) - 1)\n"
    )
    modules = shipped_modules()
    assert "evomerge.search.loop" in modules and "evomerge.__main__" in modules
    done = subprocess.run(
        [sys.executable, "-c", blocker, *modules], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"imported {len(modules)}"


def test_the_wheel_holds_evomerge_only() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = setuptools.find_packages(str(ROOT), include=include)
    assert "evomerge" in packages and "evomerge.search" in packages
    assert not [p for p in packages if not p.startswith("evomerge.") and p != "evomerge"]
    assert not (ROOT / "evomerge" / "testing.py").exists()


def test_no_import_cycles_among_shipped_modules() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "import_cycles.py"), str(ROOT / "evomerge")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip().endswith("0 import cycle(s)")


def test_no_shipped_module_passes_400_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in (ROOT / "evomerge").rglob("*.py")
    }
    assert {p: n for p, n in sizes.items() if n > 400} == {}
