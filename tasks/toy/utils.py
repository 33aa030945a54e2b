"""Data paths and scoring of the toy tasks (loaded by lm-eval from the YAMLs beside this file).

The data paths are absolute, computed from this file's location: `datasets` resolves relative
`data_files` against the current directory, not the YAML's. Scoring is the toy family's own
(`evomerge.toy.probe.score_response`), so lm-eval and direct scoring cannot disagree on a rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.toy.probe import score_response

DATA = Path(__file__).resolve().parent / "data"


def _files(task: str) -> dict[str, str]:
    return {"test": str(DATA / f"{task}.jsonl")}


TOY_MGSM_JA_FILES = _files("toy_mgsm_ja")
TOY_MGSM_JA_FIT_FILES = _files("toy_mgsm_ja_fit")
TOY_MATH_EN_FILES = _files("toy_math_en")
TOY_LANG_JA_FILES = _files("toy_lang_ja")
TOY_MATH_EN_FIT_FILES = _files("toy_math_en_fit")
TOY_LANG_JA_FIT_FILES = _files("toy_lang_ja_fit")


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """acc / correct / ja of the greedy response to one prompt."""
    return score_response(results[0], int(doc["value"]), str(doc["script"]))
