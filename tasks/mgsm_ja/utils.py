"""MGSM-JA prompt, answer extraction and the Japanese-response rule (used by mgsm_ja.yaml).

Self-contained (standard library and lm-eval only), so the task runs without evomerge.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from lm_eval.api.filter import Filter

# An Alpaca-style instruction in Japanese, as in the paper's MGSM-JA evaluation: reason step by
# step and answer in Japanese.
PROMPT = (
    "以下に、あるタスクを説明する指示があります。"
    "リクエストを適切に完了するための回答を日本語で記述してください。"
    "ステップごとに考えて、最後に答えの数値を書いてください。\n\n"
    "### 指示:\n{question}\n\n### 応答:\n"
)

# A number as GSM-style answers write it: optional sign, thousands commas, optional decimals.
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def doc_to_text(doc: dict[str, Any]) -> str:
    return PROMPT.format(question=doc["question"].strip())


def last_number(text: str) -> float | None:
    """The last number in `text` (full-width digits count), or None."""
    found = NUMBER.findall(unicodedata.normalize("NFKC", text))
    for tok in reversed(found):
        try:
            return float(tok.replace(",", "").rstrip("."))
        except ValueError:
            continue
    return None


def is_japanese_char(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x3040 <= cp <= 0x30FF  # hiragana, katakana
        or 0x31F0 <= cp <= 0x31FF  # katakana phonetic extensions
        or 0xFF66 <= cp <= 0xFF9F  # half-width katakana
        or 0x3400 <= cp <= 0x4DBF  # CJK extension A
        or 0x4E00 <= cp <= 0x9FFF  # CJK unified ideographs
        or ch in "々〆ヵヶ"
    )


def japanese_ratio(text: str) -> float:
    """Share of Japanese script among the letters of `text` (0 when it has no letters)."""
    letters = [c for c in text if unicodedata.category(c).startswith("L")]
    if not letters:
        return 0.0
    return sum(map(is_japanese_char, letters)) / len(letters)


class JapaneseAnswerFilter(Filter):
    """Maps each response to {"number": last number or None, "ja": Japanese or not}."""

    def __init__(self, ja_threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= ja_threshold <= 1.0:
            raise ValueError(f"ja_threshold must be in [0, 1], got {ja_threshold}")
        self.ja_threshold = ja_threshold

    def check(self, response: str) -> dict[str, Any]:
        return {
            "number": last_number(response),
            "ja": japanese_ratio(response) >= self.ja_threshold,
        }

    def apply(self, resps: Iterable[list[str]], docs: list[dict]) -> list[list[dict[str, Any]]]:
        return [[self.check(r) for r in inst] for inst in resps]


def process_results(doc: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float]:
    got, target = results[0]["number"], float(doc["answer_number"])
    correct = got is not None and math.isclose(got, target, rel_tol=0.0, abs_tol=1e-6)
    ja = bool(results[0]["ja"])
    return {"acc": float(correct and ja), "correct": float(correct), "ja": float(ja)}
