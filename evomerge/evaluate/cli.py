"""`python -m evomerge eval model=<dir|Hub id|recipe.yaml|toy:NAME> task=a[,b] [limit=N] [output=F]
[--allow-pickle]`.

--allow-pickle: also read pickle (.bin) checkpoints (a recipe's sources, or the model itself);
they can run code when loaded, so they are refused unless asked for."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evomerge.cli_args import make_parser
from evomerge.config import compose, quote_list_override
from evomerge.errors import ConfigError, preview
from evomerge.evaluate.backends import make_backend
from evomerge.evaluate.fitness import Results
from evomerge.evaluate.runner import evaluate
from evomerge.evaluate.settings import EvalSettings
from evomerge.evaluate.tasks import load_tasks
from evomerge.merge.confine import INDEX_FILES, ModelRoot
from evomerge.model_ref import resolve_reference


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m evomerge eval", __doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="model=... (required), task=a[,b], limit=N, output=FILE, include=[DIR], toy_size=...",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="also read pickle (.bin) checkpoints"
    )
    return parser


def parse_args(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(the config overrides, --allow-pickle); a usage error is one line (UsageError)."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"expected KEY=VALUE, got {preview(item)}")
    if not any(item.startswith("model=") for item in args.overrides):
        parser.error("model= is required (a directory, Hub id, recipe.yaml or toy:NAME)")
    return list(args.overrides), args.allow_pickle


def main(argv: Sequence[str]) -> int:
    argv, allow_pickle = parse_args(argv)
    argv = ["tasks=" + a.removeprefix("task=") if a.startswith("task=") else a for a in argv]
    cfg = compose("eval", quote_list_override(argv, "tasks"))
    evaluator = dict(cfg["evaluator"])
    if allow_pickle:
        evaluator["allow_pickle"] = True
    if cfg.get("limit") is not None:
        evaluator["limit"] = cfg["limit"]
    settings = EvalSettings.from_dict(evaluator)
    names = cfg["tasks"] if isinstance(cfg["tasks"], list) else [cfg["tasks"]]
    results = run_eval(
        str(cfg["model"]),
        [str(n) for n in names],
        settings,
        toy_size=cfg["toy_size"],
        include=[str(p) for p in cfg.get("include") or []],
    )
    print(format_table(results))
    if cfg.get("output"):
        write_json_atomic(Path(cfg["output"]), results)
        print(f"wrote {cfg['output']}")
    return 0


def run_eval(
    model: str,
    tasks: list[str],
    settings: EvalSettings,
    *,
    toy_size: str = "full",
    include: Sequence[str] = (),
) -> Results:
    """Evaluate a model directory / Hub id / recipe / toy member on the named tasks."""
    if model.endswith((".yaml", ".yml")):
        from evomerge.merge.multistage import load_stages

        load_stages(Path(model))  # a bad recipe fails before the tasks are built
        task_set = load_tasks(tasks, settings, extra_paths=include)
        return _eval_recipe(Path(model), task_set, settings)
    path = resolve_reference(model, toy_size)
    if os.path.isdir(path):  # transformers reads what it finds there: check it all first
        ModelRoot.of(path).check_files(INDEX_FILES)
    task_set = load_tasks(tasks, settings, extra_paths=include)
    backend = make_backend(path, settings)
    return evaluate(backend, task_set).results


def _eval_recipe(path: Path, task_set: Any, settings: EvalSettings) -> Results:
    from evomerge.merge.execute import MergeOptions
    from evomerge.merge.multistage import merge_recipe_file

    with tempfile.TemporaryDirectory(prefix="evomerge-eval-") as tmp:
        options = MergeOptions(allow_pickle=settings.allow_pickle)
        out = merge_recipe_file(path, Path(tmp) / "merged", options)  # one or several stages
        backend = make_backend(out, settings)
        return evaluate(backend, task_set).results


def format_table(results: Results) -> str:
    rows = [("task", "metric", "value")]
    for task, metrics in results.items():
        rows += [(task, m, f"{v:.4f}") for m, v in sorted(metrics.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
