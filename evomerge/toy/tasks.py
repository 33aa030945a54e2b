"""The toy tasks' data: fixed, deterministic example lists, bundled as JSONL for lm-eval.

`TASKS` maps each lm-eval task name (tasks/toy/*.yaml) to its examples. The JSONL files in
tasks/toy/data/ are `write_task_data`'s output, committed; a test checks they are current.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from evomerge.toy.data import Example, Splits, make_splits, parse_body

# lm-eval task name -> (mode, which held-out bodies)
TASK_SPECS: dict[str, tuple[str, Callable[[Splits], tuple[str, ...]]]] = {
    # the target: Japanese-mode sums, never trained; test split and the search's fitness split
    "toy_mgsm_ja": ("J", lambda s: s.sum_test),
    "toy_mgsm_ja_fit": ("J", lambda s: s.sum_fit),
    # the math specialists' own skill: the same sums in English mode
    "toy_math_en": ("E", lambda s: s.sum_test),
    # the language specialist's own skill: the larger of two numbers, answered in kanji
    "toy_lang_ja": ("J", lambda s: s.max_test),
}


def task_examples(name: str, splits: Splits | None = None) -> list[Example]:
    if name not in TASK_SPECS:
        raise KeyError(f"unknown toy task {name!r}; known: {sorted(TASK_SPECS)}")
    mode, bodies = TASK_SPECS[name]
    return [parse_body(mode, b) for b in bodies(splits or make_splits())]


def to_record(ex: Example) -> dict[str, object]:
    """One JSONL row: what lm-eval's doc_to_text / doc_to_target / process_results read."""
    return {"prompt": ex.prompt, "answer": ex.answer, "value": ex.value, "script": ex.script}


def write_task_data(out_dir: Path) -> list[Path]:
    """Write `{task}.jsonl` for every toy task into `out_dir`; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = make_splits()
    paths = []
    for name in TASK_SPECS:
        path = out_dir / f"{name}.jsonl"
        lines = [
            json.dumps(to_record(ex), ensure_ascii=False) for ex in task_examples(name, splits)
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
