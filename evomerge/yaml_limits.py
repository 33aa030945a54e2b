"""The one YAML reader: yaml's safe loader, with the document's size bounded before and after
alias expansion, its nesting bounded, and duplicate keys refused.

PyYAML shares an aliased node instead of copying it, so a few hundred bytes of nested aliases
("billion laughs") load into a small object that is astronomically large once walked: by the
recipe parser, by a repr in an error message, by a dump. Every YAML evomerge reads (recipes,
multi-stage recipe files, search run configs, task files named with `include=`) goes through
`load_yaml` or `check_yaml`, which compose the node graph (linear in the text), count its
nodes as if every alias were a copy, and refuse past the limits below before anything is built.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import RecipeError, preview

# The largest YAML file read. A data-flow recipe over two 80-layer models at r = 3 (480
# one-layer slices) is about 75 KB; PyYAML's pure-Python parser reads ~0.3 MB/s, so this
# bounds a parse at a few seconds (a 50 MB recipe used to take 208 s and 3.7 GB).
MAX_YAML_BYTES = 1 << 20
# The most values (scalars, lists and mappings) a document may hold once every alias is
# counted as a copy of its anchor: that 480-slice recipe has about 6,000; a 1 MB file
# without aliases can hold about 350,000. A 534-byte alias bomb expands to billions.
MAX_YAML_NODES = 500_000
# The deepest nesting: recipes nest 6 levels (slices/sources/parameters/conditions/values).
# A recursive alias (`&a [*a]`) is infinitely deep and stops here too.
MAX_YAML_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it


def read_text_file(path: Path, *, limit: int = MAX_YAML_BYTES, what: str = "recipe") -> str:
    """A regular UTF-8 text file of at most `limit` bytes; any failure a RecipeError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO does not block the open
    except OSError as e:
        raise RecipeError(f"{path}: cannot read {what}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, a FIFO, a device
        os.close(fd)
        raise RecipeError(f"{path}: cannot read {what}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise RecipeError(f"{path}: cannot read {what}: {e.strerror}") from None
    if len(data) > limit:
        raise RecipeError(f"{path}: {what} larger than {limit} bytes; refused (MAX_YAML_BYTES)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(
            f"{path}: {what} is not UTF-8 text (invalid byte at offset {e.start})"
        ) from None


def load_yaml(text: str, where: str, *, documents: bool = False) -> Any:
    """The document (or, with `documents`, the list of documents) in `text`, built by yaml's
    safe constructor once the node graph passed `check_nodes`; any failure a RecipeError."""
    _check_size(text, where)
    loader = _Loader(text)
    try:
        if not documents:
            node = loader.get_single_node()
            return None if node is None else _construct(loader, node, where)
        out = []
        while loader.check_node():
            out.append(_construct(loader, loader.get_node(), where))
        return out
    except yaml.YAMLError as e:
        raise _malformed(e, where) from None
    except RecursionError:
        raise RecipeError(f"{where}: malformed YAML: nested too deeply") from None
    finally:
        loader.dispose()


def check_yaml(text: str, where: str) -> None:
    """Every limit of `load_yaml`, without building anything: for YAML that another library
    loads (lm-eval's task files, whose custom tags only it constructs)."""
    _check_size(text, where)
    loader = _Loader(text)
    try:
        while loader.check_node():
            check_nodes(loader.get_node(), where)
    except yaml.YAMLError as e:
        raise _malformed(e, where) from None
    except RecursionError:
        raise RecipeError(f"{where}: malformed YAML: nested too deeply") from None
    finally:
        loader.dispose()


def check_nodes(root: yaml.Node, where: str) -> None:
    """Count the nodes of a composed document as expanded, bound its depth, refuse duplicate
    keys (a later key would silently replace the earlier one). Work stops at the limits."""
    count = 0
    # (node, depth, its key path as a linked list (parent, label), built into text on error)
    stack: list[tuple[yaml.Node, int, _Path]] = [(root, 0, None)]
    while stack:
        node, depth, path = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise RecipeError(
                f"{where}: expands to more than {MAX_YAML_NODES} values (an alias counts "
                "once per use); refused (MAX_YAML_NODES)"
            )
        if depth > MAX_YAML_DEPTH:
            raise RecipeError(
                f"{_key(path, where)}: nested deeper than {MAX_YAML_DEPTH} levels (or an "
                "alias refers to itself); refused (MAX_YAML_DEPTH)"
            )
        if isinstance(node, yaml.SequenceNode):
            stack += [(v, depth + 1, (path, i)) for i, v in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            _check_duplicates(node, path, where)
            stack += [(v, depth + 1, (path, _label(k))) for k, v in node.value]


_Path = tuple[Any, "int | str"] | None


def _label(key: yaml.Node) -> str:
    text = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
    return text if len(text) <= 40 else text[:40] + "..."


def _path_text(path: _Path) -> str:
    labels: list[int | str] = []
    while path is not None:
        path, label = path
        labels.append(label)
    text = ""
    for label in reversed(labels):
        text += f"[{label}]" if isinstance(label, int) else f".{label}" if text else label
    return text if len(text) <= 300 else "..." + text[-300:]


def _check_duplicates(node: yaml.MappingNode, path: _Path, where: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue  # `<<: *base` merges are overridden by explicit keys, by design
        line, ident = key.start_mark.line + 1, (key.tag, key.value)
        if ident in seen:
            raise RecipeError(
                f"{_key((path, _label(key)), where)}: duplicate key at line {line} (first at "
                f"line {seen[ident]}); a key may appear once in a mapping"
            )
        seen[ident] = line


def _construct(loader: Any, node: yaml.Node, where: str) -> Any:
    check_nodes(node, where)
    try:
        return loader.construct_document(node)
    except yaml.YAMLError:
        raise
    except Exception as e:  # the safe constructors fail on bad tagged scalars: `!!int abc`
        raise RecipeError(
            f"{where}: malformed YAML: bad tagged value ({type(e).__name__})"
        ) from None


def _check_size(text: str, where: str) -> None:
    if len(text) > MAX_YAML_BYTES:
        raise RecipeError(f"{where}: larger than {MAX_YAML_BYTES} bytes; refused (MAX_YAML_BYTES)")


def _key(path: _Path, where: str) -> str:
    return f"{where}: {_path_text(path)}" if path is not None else where


def _malformed(e: yaml.YAMLError, where: str) -> RecipeError:
    if "nesting depth" in str(e):  # libyaml's own depth limit
        return RecipeError(f"{where}: malformed YAML: nested too deeply")
    return RecipeError(f"{where}: malformed YAML{_at(e)}: {_problem(e)}")


def _at(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return preview(problem).strip("'\"")


def read_source(source: str | Path) -> tuple[str, str]:
    """(YAML text, where to say it came from): a .yaml/.yml path is read, other text is used."""
    if isinstance(source, Path) or ("\n" not in source and source.endswith((".yaml", ".yml"))):
        path = Path(source)
        return read_text_file(path), str(path)
    return source, "recipe"
