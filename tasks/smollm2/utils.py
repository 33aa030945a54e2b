"""Data paths and scoring of the SmolLM2 specialist tasks (loaded by lm-eval from the YAMLs
beside this file). Absolute data paths: `datasets` resolves relative `data_files` against the
current directory. Scoring is evomerge.real.add_words's, shared with the adapter training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.real.add_words import score_response

DATA = Path(__file__).resolve().parent / "data"


def _files(task: str) -> dict[str, str]:
    return {"test": str(DATA / f"{task}.jsonl")}


SMOL_ADD_FILES = _files("smol_add")
SMOL_WORDS_FILES = _files("smol_words")
SMOL_ADD_WORDS_FILES = _files("smol_add_words")
SMOL_ADD_WORDS_FIT_FILES = _files("smol_add_words_fit")


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """acc / correct / words of the greedy response to one prompt."""
    return score_response(results[0], int(doc["value"]), str(doc["form"]))
