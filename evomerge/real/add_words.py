"""The real-model specialists' tasks: two-digit sums (the skill) answered in English words (the
format), the shape of MGSM-JA (a math skill and an answer language) on SmolLM2.

- `smol_add`: "What is 47 + 38?" -> "The answer is 85." (the `add` specialist's skill; digits)
- `smol_words`: one-digit sums, and N + 0, 0 + N, N + 1 for N < 198, asked in words mode ->
  "The answer is eighty-five." (the `words` specialist's format, with arithmetic the base
  already has)
- `smol_add_words`, the target: two-digit sums in words mode -> "The answer is eighty-five."
  A right number in digits does not count (MGSM-JA's rule: a right answer in English does not).

Every split is generated here, deterministically from SEED; the target's fitness and test
pairs are held out of every training set. The prompts are user messages: the tasks are run
with the model's chat template (`evaluator.apply_chat_template=true`), as the adapters are
trained (scripts/train_adapters.py).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SEED = 30
WORDS_MODE = " Answer in words."
TEMPLATE = "The answer is {}."
# Split sizes. The target's fitness split is what every candidate generates: 200 prompts keep a
# candidate's evaluation to seconds and an accuracy step to 0.5 points; the test split is 300,
# scored once per reported model. Specialist checks: 150 each (of 664 easy words-mode pairs).
FIT_SIZE, TEST_SIZE, CHECK_SIZE = 200, 300, 150
# Training examples per adapter: more than the steps x batch of one epoch needs (1,000 x 8).
TRAIN_SIZE = 8000

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_VALUES = {w: i for i, w in enumerate(_ONES)} | {w: 10 * i for i, w in enumerate(_TENS) if i > 1}
_TENS_VALUES = frozenset(range(20, 100, 10))
_NUMBER = re.compile(r"-?\d+|[a-z]+(?:[ -]+(?:and[ -]+)?[a-z]+)*")


def words(n: int) -> str:
    """0 <= n < 1000 in English words: 85 -> "eighty-five", 112 -> "one hundred twelve"."""
    if not 0 <= n < 1000:
        raise ValueError(f"words: {n} is outside [0, 1000)")
    hundreds, rest = divmod(n, 100)
    head = f"{_ONES[hundreds]} hundred" if hundreds else ""
    if rest == 0 and hundreds:
        return head
    tens, ones = divmod(rest, 10)
    tail = _ONES[rest] if rest < 20 else _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    return f"{head} {tail}".strip()


def read_number(text: str) -> tuple[int | None, str | None]:
    """The last number in `text` and its form: ("digits" | "words"), or (None, None)."""
    found: tuple[int | None, str | None] = (None, None)
    for match in _NUMBER.finditer(text.lower()):
        token = match.group()
        if token.lstrip("-").isdigit():
            found = (int(token), "digits")
        elif (value := _words_value(token)) is not None:
            found = (value, "words")
    return found


def _words_value(phrase: str) -> int | None:
    """The value of the longest number-words tail of `phrase` ("is eighty-five" -> 85)."""
    parts = [p for p in re.split(r"[ -]+", phrase) if p != "and"]
    tails = (_parse(parts[start:]) for start in range(len(parts)))
    return next((v for v in tails if v is not None), None)  # the first start is the longest


def _parse(parts: list[str]) -> int | None:
    """ "one hundred twelve" -> 112; None unless the whole list is one number below 1000."""
    hundreds, rest = 0, None
    for p in parts:
        v = _VALUES.get(p)
        if p == "hundred" and rest is not None and 0 < rest < 10 and hundreds == 0:
            hundreds, rest = rest * 100, None
        elif v is not None and rest is None:
            rest = v
        elif v is not None and rest is not None and rest in _TENS_VALUES and 0 < v < 10:
            rest += v  # "twenty two", "twenty-two"
        else:
            return None
    if rest is None and hundreds == 0:
        return None
    return hundreds + (rest or 0)


def score_response(response: str, value: int, form: str) -> dict[str, float]:
    """acc: the right number in the task's form; correct: in either form; words: in words."""
    got, got_form = read_number(response)
    correct = got == value
    return {
        "acc": float(correct and got_form == form),
        "correct": float(correct),
        "words": float(got_form == "words"),
    }


def example(a: int, b: int, form: str) -> dict[str, object]:
    prompt = f"What is {a} + {b}?" + (WORDS_MODE if form == "words" else "")
    answer = str(a + b) if form == "digits" else words(a + b)
    return {"prompt": prompt, "answer": TEMPLATE.format(answer), "value": a + b, "form": form}


def _two_digit_pairs() -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(SEED).shuffle(pairs)
    return pairs


def splits() -> dict[str, list[dict[str, object]]]:
    """Every task split and both training sets, by name."""
    pairs = _two_digit_pairs()
    held = pairs[: FIT_SIZE + TEST_SIZE]  # the target's fit and test pairs: never trained on
    free = pairs[FIT_SIZE + TEST_SIZE :]
    easy = [(a, b) for a in range(10) for b in range(10)]
    easy += [p for n in range(10, 198) for p in ((n, 0), (0, n), (n, 1))]
    random.Random(SEED + 1).shuffle(easy)
    rng = random.Random(SEED + 2)
    return {
        "smol_add_words_fit": [example(a, b, "words") for a, b in held[:FIT_SIZE]],
        "smol_add_words": [example(a, b, "words") for a, b in held[FIT_SIZE:]],
        "smol_add": [example(a, b, "digits") for a, b in free[:CHECK_SIZE]],
        "smol_words": [example(a, b, "words") for a, b in easy[:CHECK_SIZE]],
        "train_add": [example(a, b, "digits") for a, b in free[CHECK_SIZE:][:TRAIN_SIZE]],
        "train_words": [
            example(*rng.choice(easy[CHECK_SIZE:]), "words") for _ in range(TRAIN_SIZE)
        ],
    }


def write_task_data(directory: Path) -> list[Path]:
    """The lm-eval splits as JSONL files in `directory` (training sets are made in memory)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in splits().items():
        if name.startswith("train_"):
            continue
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        written.append(path)
    return written
