"""Structure figures of the search side, from the source (ast) and one traced toy search.

    python scripts/structure_figures.py [--root DIR] [--walk] [--json OUT]

- modules and lines of evomerge/search (every .py file, `__init__.py` counted apart);
- import layers and edges among evomerge/search's modules (every import, as
  scripts/import_cycles.py reads them; a module's layer is one above the highest search
  module it imports, a module importing none is layer 1);
- functions over 50 lines anywhere in evomerge/ (from `def` to the last line of the body);
- private reaches: `x._name` where `x` is not `self` or `cls`, and `from m import _name`
  from a module outside evomerge, per file;
- with --walk: the search config's walk from `run_search`, traced in one small toy search (2
  trials, small family): every evomerge function is taken at its first call in which one of
  its arguments is the SearchConfig or an object inside it (its sections, their tuples and
  dataclasses: anything but str/int/float/bool/None, which Python shares); those functions'
  modules, in call order, make the walk. A stay is a run of consecutive functions of one
  module; a return is a stay in a module already left. The issue's own count was read by hand
  in code order; this one is mechanical, so compare it only with itself.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from import_cycles import cycles, imports_of, module_names

LONG = 50  # the project's function-length rule (style.md)


def search_modules(root: Path) -> dict[str, Any]:
    files = sorted((root / "search").glob("*.py"))
    lines = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    return {
        "modules": sum(1 for n in lines if n != "__init__.py"),
        "lines": sum(lines.values()),
        "largest": max(lines.items(), key=lambda kv: kv[1]),
    }


def layers(root: Path) -> dict[str, Any]:
    modules = module_names(root.resolve())
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    inside = {n for n in modules if n.startswith("evomerge.search.")}
    edges = {n: {m for m in graph[n] if m in inside} for n in inside}
    layer: dict[str, int] = {}

    def of(n: str, seen: frozenset[str] = frozenset()) -> int:
        if n not in layer:
            below = [of(m, seen | {n}) for m in edges[n] if m not in seen]
            layer[n] = 1 + max(below, default=0)
        return layer[n]

    for n in sorted(inside):
        of(n)
    return {
        "layers": max(layer.values()),
        "edges": sum(len(e) for e in edges.values()),
        "by_layer": {
            k: sorted(n.rpartition(".")[2] for n in layer if layer[n] == k)
            for k in range(1, max(layer.values()) + 1)
        },
        "cycles_in_evomerge": len(cycles(graph)),
    }


def long_functions(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > LONG:
                    out.append(f"{path.relative_to(root.parent)}:{node.name} {n}")
    return out


def not_ours(node: ast.ImportFrom) -> bool:
    return node.level == 0 and not (node.module or "").startswith("evomerge")


def private_reaches(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{node.lineno}:.{node.attr}")
            if isinstance(node, ast.ImportFrom) and not_ours(node):
                found += [
                    f"{node.lineno}:import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
        if found:
            out[str(path.relative_to(root.parent))] = found
    return out


def walk(root: Path) -> dict[str, Any]:
    """The traced walk (see the module docstring)."""
    import dataclasses
    import tempfile

    from evomerge.config import compose
    from evomerge.search.config import search_config

    sys.path.insert(0, str(root.parent))
    import evomerge.search.loop as loop

    results = tempfile.mkdtemp(prefix="walk.")
    overrides = ["models.toy_size=small", "optimizer.n_trials=2", "score_test=false"]
    overrides += ["evaluator.limit=20", "threads=1", "run=walk", f"results_dir={results}"]
    cfg = search_config(compose("search", overrides))
    parts: set[int] = set()

    def collect(obj: Any) -> None:
        if obj is None or isinstance(obj, str | int | float | bool) or id(obj) in parts:
            return
        parts.add(id(obj))
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                collect(getattr(obj, f.name))
        elif isinstance(obj, tuple | list):
            for x in obj:
                collect(x)
        elif isinstance(obj, dict):
            for x in obj.values():
                collect(x)

    collect(cfg)
    seen: set[Any] = set()
    order: list[tuple[str, str]] = []
    top = str(root.resolve())

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code in seen or not code.co_filename.startswith(top):
            return
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(id(frame.f_locals.get(n)) in parts for n in names):
            seen.add(code)
            module = Path(code.co_filename).relative_to(top).with_suffix("")
            order.append((".".join(module.parts), code.co_qualname))

    sys.setprofile(profile)
    try:
        loop.run_search(cfg, progress=False)
    finally:
        sys.setprofile(None)
    stays: list[str] = []
    for module, _ in order:
        if not stays or stays[-1] != module:
            stays.append(module)
    returns = sum(1 for i, m in enumerate(stays) if m in stays[:i])
    return {
        "stays": len(stays),
        "modules": len(set(stays)),
        "returns": returns,
        "stay_modules": stays,
        "functions": [f"{m}.{f}" for m, f in order],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[1] / "evomerge"
    p.add_argument("--root", type=Path, default=here, help="an evomerge package directory")
    p.add_argument("--walk", action="store_true", help="trace the walk (runs a toy search)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    root = args.root.resolve()
    figures: dict[str, Any] = {
        "search": search_modules(root),
        "imports": layers(root),
        "long_functions": long_functions(root),
        "private_reaches": private_reaches(root),
    }
    if args.walk:
        figures["walk"] = walk(root)
    text = json.dumps(figures, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    s, imp = figures["search"], figures["imports"]
    print(f"evomerge/search: {s['modules']} modules, {s['lines']} lines, largest {s['largest']}")
    print(f"imports in evomerge/search: {imp['layers']} layers, {imp['edges']} edges; ", end="")
    print(f"cycles in evomerge: {imp['cycles_in_evomerge']}")
    print(f"functions over {LONG} lines: {len(figures['long_functions'])}")
    for f in figures["long_functions"]:
        print("  ", f)
    reaches = figures["private_reaches"]
    print(f"private reaches: {sum(map(len, reaches.values()))} in {len(reaches)} files")
    for f, r in reaches.items():
        print("  ", f, len(r), " ".join(r[:8]))
    if args.walk:
        w = figures["walk"]
        print(f"walk from run_search: {w['stays']} stays in {w['modules']} modules, ", end="")
        print(f"{w['returns']} returns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
