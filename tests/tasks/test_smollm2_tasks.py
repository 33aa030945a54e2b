"""The SmolLM2 specialist tasks (tasks/smollm2/): deterministic splits, held-out target pairs,
and the rule that a right sum counts on the target only when written in words."""

import json
from pathlib import Path

import pytest
from lm_eval.tasks import TaskManager

from evomerge.real.add_words import read_number, score_response, splits, words, write_task_data

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
TASKS = ["smol_add", "smol_words", "smol_add_words", "smol_add_words_fit"]


def test_words_round_trip_below_a_thousand() -> None:
    for n in range(1000):
        assert read_number(f"The answer is {words(n)}.") == (n, "words"), n
    assert words(85) == "eighty-five" and words(112) == "one hundred twelve"
    with pytest.raises(ValueError, match="outside"):
        words(1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("23 + 48 = 71.", (71, "digits")),
        ("The answer is one hundred and twelve.", (112, "words")),
        ("twenty two", (22, "words")),
        ("It is 70, so seventy-one.", (71, "words")),  # the last number counts
        ("no number here", (None, None)),
        ("hundred", (None, None)),
    ],
)
def test_read_number_takes_the_last_number(text: str, expected: tuple) -> None:
    assert read_number(text) == expected


def test_a_right_sum_in_digits_does_not_count_in_words_mode() -> None:
    assert score_response("The answer is seventy-one.", 71, "words")["acc"] == 1.0
    assert score_response("The answer is 71.", 71, "words") == {
        "acc": 0.0,
        "correct": 1.0,
        "words": 0.0,
    }
    assert score_response("The answer is 71.", 71, "digits")["acc"] == 1.0
    assert score_response("The answer is seventy.", 71, "words")["acc"] == 0.0


def test_committed_data_is_the_generated_data(tmp_path: Path) -> None:
    for path in write_task_data(tmp_path):
        assert path.read_bytes() == (TASKS_DIR / "smollm2" / "data" / path.name).read_bytes()


def test_target_pairs_are_never_trained_on() -> None:
    s = splits()
    held = {r["prompt"].removesuffix(" Answer in words.") for r in s["smol_add_words"]}
    held |= {r["prompt"].removesuffix(" Answer in words.") for r in s["smol_add_words_fit"]}
    assert len(held) == 500
    trained = {
        str(r["prompt"]).removesuffix(" Answer in words.")
        for k in s
        if k.startswith("train_")
        for r in s[k]
    }
    assert not held & trained
    assert not {r["prompt"] for r in s["smol_add"]} & {r["prompt"] for r in s["train_add"]}
    assert not {r["prompt"] for r in s["smol_words"]} & {r["prompt"] for r in s["train_words"]}
    assert all(r["form"] == "words" for r in s["train_words"])


def test_lm_eval_loads_the_bundled_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the data paths do not depend on the working directory
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    tasks = manager.load(TASKS)["tasks"]
    sizes = {name: len(list(tasks[name].test_docs())) for name in TASKS}
    assert sizes == {
        "smol_add": 150,
        "smol_words": 150,
        "smol_add_words": 300,
        "smol_add_words_fit": 200,
    }
    doc = next(iter(tasks["smol_add_words"].test_docs()))
    first = json.loads((TASKS_DIR / "smollm2/data/smol_add_words.jsonl").read_text().split("\n")[0])
    assert doc["prompt"] == first["prompt"]
    right = tasks["smol_add_words"].process_results(doc, [first["answer"]])
    assert right == {"acc": 1.0, "correct": 1.0, "words": 1.0}
