"""lm-eval tasks, built once per process: our tasks/ directory plus every task lm-eval knows."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.errors import EvaluationError, preview
from evomerge.evaluate.settings import EvalSettings
from evomerge.yaml_limits import check_yaml, read_text_file

# tasks/ at the repository root (the package is installed in editable mode from the checkout).
TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


@dataclass
class TaskSet:
    """Loaded lm-eval tasks (the dict `TaskManager.load` returns), ready to run many times."""

    names: tuple[str, ...]
    task_dict: dict[str, Any]
    built_for: tuple[Any, ...] | None = None  # requests built for (lm, limit, chat template)
    # each task's (doc_id, doc) pairs within the limit, read once with the requests
    docs: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)

    @property
    def tasks(self) -> dict[str, Any]:
        return dict(self.task_dict["tasks"])


def make_task_manager(extra_paths: Sequence[str | Path] = (), *, names: Sequence[str] = ()) -> Any:
    """A TaskManager over our tasks/ (+ extra paths); lm-eval's own ~15k tasks are indexed
    (several seconds) only when a requested name is not among ours."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *(str(p) for p in extra_paths)]
    ours = TaskManager(include_path=paths, include_defaults=False)
    if names and set(names) <= _known(ours):
        return ours
    return TaskManager(include_path=paths)


def _known(tm: Any) -> set[str]:
    return set(tm.all_tasks) | set(tm.all_groups) | set(tm.all_tags)


def load_tasks(
    names: Sequence[str],
    settings: EvalSettings,
    *,
    extra_paths: Sequence[str | Path] = (),
    task_manager: Any = None,
) -> TaskSet:
    """Build the named tasks once (datasets read, prompts prepared) and apply the overrides.

    Unknown names raise an EvaluationError that suggests the closest known task names.
    """
    tm = check_task_names(names, extra_paths, task_manager=task_manager)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    try:
        loaded = tm.load(list(names))
    except Exception as e:  # dataset missing, malformed YAML, ...
        raise EvaluationError(f"task: could not build {list(names)}: {e}") from e
    for task in loaded["tasks"].values():
        _apply_overrides(task, settings)
    return TaskSet(tuple(names), loaded)


def check_task_names(
    names: Sequence[str], extra_paths: Sequence[str | Path] = (), *, task_manager: Any = None
) -> Any:
    """The TaskManager that knows every name (our tasks/, `extra_paths`, then lm-eval's own),
    once the task files under `extra_paths` passed the YAML limits; an unknown name is an
    EvaluationError suggesting the closest known ones. Reads no dataset."""
    if not names:
        raise EvaluationError("task: at least one task name is required")
    check_task_files(extra_paths)
    tm = task_manager or make_task_manager(extra_paths, names=names)
    known = _known(tm)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EvaluationError(f"task: unknown task {preview(name)}{hint}")
    return tm


def check_task_files(paths: Sequence[str | Path]) -> None:
    """The task YAMLs under user-named `include` paths pass the limits of every YAML evomerge
    reads (size, alias expansion, nesting, duplicate keys) before lm-eval loads them."""
    for top in paths:
        files = [Path(top)] if Path(top).is_file() else sorted(Path(top).rglob("*.y*ml"))
        for file in files:
            if file.suffix in (".yaml", ".yml"):
                check_yaml(read_text_file(file, what="task file"), str(file))


def _apply_overrides(task: Any, settings: EvalSettings) -> None:
    if task.get_config("output_type") == "generate_until" and settings.gen_kwargs:
        task.set_config(key="generation_kwargs", value=dict(settings.gen_kwargs), update=True)
    if settings.num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=settings.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    # Few-shot sampling is seeded, so the same candidate always sees the same prompts.
    task.set_fewshot_seed(seed=1234)
