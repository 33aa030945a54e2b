"""tasks/mgsm_ja offline: the real task YAML on a fixture in the dataset's schema, scored from
canned responses, and its answer checks one by one."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

TASK_DIR = Path(__file__).resolve().parents[2] / "tasks" / "mgsm_ja"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mgsm_ja_sample.jsonl"


def load_utils() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mgsm_ja_utils", TASK_DIR / "utils.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = load_utils()

# question prefix -> canned response
RESPONSES = {
    # right number, Japanese: the only kind that scores
    "ジャネット": "16 - 3 - 4 = 9個の卵が残ります。9 × 2 = 18ドルです。答えは18です。",
    # right number, but in English: correct, not Japanese, acc 0
    "ローブ": "Blue takes 2 bolts and white takes half of that, 1 bolt. The answer is 3.",
    # Japanese, full-width digits and thousands separators, right number
    "ジョシュ": "利益は２００，０００ドル－１３０，０００ドル＝７０，０００ドルです。",
    # Japanese, wrong last number
    "ジェームズ": "3 × 3 × 60 = 540メートル。つまり1週間で54本です。",
}


class CannedLM(LM):
    """Answers each MGSM question with a fixed response; records the prompts it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            prompt = req.args[0]
            self.prompts.append(prompt)
            out.append(next(r for q, r in RESPONSES.items() if q in prompt))
        return out

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        raise NotImplementedError

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        raise NotImplementedError


def test_real_task_on_a_fixture_applies_the_japanese_rule(tmp_path: Path) -> None:
    (tmp_path / "mgsm_ja_fixture.yaml").write_text(
        json.dumps(
            {
                "include": str(TASK_DIR / "mgsm_ja.yaml"),
                "task": "mgsm_ja_fixture",
                "dataset_path": "json",
                "dataset_name": None,
                "dataset_kwargs": {"data_files": {"test": str(FIXTURE)}},
            }
        )
    )
    lm = CannedLM()
    out = simple_evaluate(
        model=lm,
        tasks=["mgsm_ja_fixture"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    assert out is not None
    res = out["results"]["mgsm_ja_fixture"]
    assert res["acc,ja-answer"] == pytest.approx(2 / 4)
    assert res["correct,ja-answer"] == pytest.approx(3 / 4)
    assert res["ja,ja-answer"] == pytest.approx(3 / 4)
    by_question = {s["doc"]["question"][:4]: s for s in out["samples"]["mgsm_ja_fixture"]}
    english = next(s for q, s in by_question.items() if q.startswith("ローブ"))
    assert english["acc"] == 0 and english["correct"] == 1  # right number in English: 0
    assert all(p.startswith("以下に、あるタスク") and "### 応答:" in p for p in lm.prompts)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("答えは18です。", 18.0),
        ("1,234円と5.5個、最後は-3", -3.0),
        ("全角の１２３", 123.0),
        ("答えは70,000ドルです。", 70000.0),
        ("数字がありません", None),
    ],
)
def test_last_number(text: str, number: float | None) -> None:
    assert utils.last_number(text) == number


def test_japanese_ratio_counts_letters_only() -> None:
    assert utils.japanese_ratio("答えは18です。") == 1.0
    assert utils.japanese_ratio("The answer is 18.") == 0.0
    assert utils.japanese_ratio("18") == 0.0
    assert utils.japanese_ratio("答え is 18") == pytest.approx(2 / 4)


def test_threshold_is_read_from_the_filter_arguments() -> None:
    strict = utils.JapaneseAnswerFilter(ja_threshold=0.9)
    loose = utils.JapaneseAnswerFilter(ja_threshold=0.3)
    mixed = "答え is 18"
    assert strict.apply([[mixed]], [{}]) == [[{"number": 18.0, "ja": False}]]
    assert loose.apply([[mixed]], [{}]) == [[{"number": 18.0, "ja": True}]]
    with pytest.raises(ValueError, match=r"ja_threshold must be in \[0, 1\], got 2"):
        utils.JapaneseAnswerFilter(ja_threshold=2)
