"""The toy tasks' data: fixed, deterministic example lists, bundled as JSONL for lm-eval.

`TASKS` maps each lm-eval task name (tasks/toy/*.yaml) to its examples. The JSONL files in
tasks/toy/data/ are `write_task_data`'s output, committed; a test checks they are current.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from evomerge.toy.data import SKILLS, Example, Splits, make_splits, parse_body

# Fitness splits of the two probes, for searches that keep the parents' skills (task config
# toy_mgsm_ja_keep): 200 prompts each, enough to tell a kept skill (~90%) from a lost one
# within ~2 points (binomial sd at 200) while adding under half a target split's cost.
KEEP_FIT_SIZE = 200
KEEP_FIT_SEED = 1001  # fixed like SPLIT_SEED: the splits are part of the tasks' version


def sum_keep_fit(splits: Splits) -> tuple[str, ...]:
    """The math probe's fitness split: the first KEEP_FIT_SIZE bodies of the target's fitness
    split (so disjoint from the test split), asked in English mode."""
    return splits.sum_fit[:KEEP_FIT_SIZE]


def max_keep_fit(splits: Splits) -> tuple[str, ...]:
    """The language probe's fitness split: KEEP_FIT_SIZE max-of-two bodies outside its test
    split, drawn with their own seed (make_splits, and with it the family, is unchanged)."""
    rng = random.Random(KEEP_FIT_SEED)
    gen, taken = SKILLS["E_max"], set(splits.max_test)
    out: list[str] = []
    while len(out) < KEEP_FIT_SIZE:
        body = gen(rng).body
        if body not in taken:
            taken.add(body)
            out.append(body)
    return tuple(out)


# lm-eval task name -> (mode, which held-out bodies)
TASK_SPECS: dict[str, tuple[str, Callable[[Splits], tuple[str, ...]]]] = {
    # the target: Japanese-mode sums, never trained; test split and the search's fitness split
    "toy_mgsm_ja": ("J", lambda s: s.sum_test),
    "toy_mgsm_ja_fit": ("J", lambda s: s.sum_fit),
    # the math specialists' own skill: the same sums in English mode
    "toy_math_en": ("E", lambda s: s.sum_test),
    "toy_math_en_fit": ("E", sum_keep_fit),
    # the language specialist's own skill: the larger of two numbers, answered in kanji
    "toy_lang_ja": ("J", lambda s: s.max_test),
    "toy_lang_ja_fit": ("J", max_keep_fit),
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
