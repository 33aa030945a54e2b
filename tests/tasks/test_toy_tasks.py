"""The toy tasks through lm-eval agree with direct greedy scoring, from any working directory."""

from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.toy import ToyFamily
from evomerge.toy.probe import generate, score
from evomerge.toy.tasks import TASK_SPECS, task_examples

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    # include_defaults=False: skip indexing lm-eval's thousands of built-in tasks (seconds)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a directory that holds neither the tasks nor their data."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_toy_task_loads_its_bundled_split(task_manager: TaskManager, elsewhere: Path) -> None:
    tasks = task_manager.load(list(TASK_SPECS))["tasks"]
    for name in TASK_SPECS:
        docs = list(tasks[name].test_docs())
        assert [d["prompt"] for d in docs] == [ex.prompt for ex in task_examples(name)]
    assert len(list(tasks["toy_mgsm_ja_fit"].test_docs())) == 700


@pytest.mark.parametrize("name", ["math_en", "lang_ja"])
def test_lm_eval_scores_equal_direct_greedy_scoring(
    small_family: ToyFamily, task_manager: TaskManager, elsewhere: Path, name: str
) -> None:
    path = small_family.path(name)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tasks = ["toy_mgsm_ja", "toy_math_en", "toy_lang_ja"]
    # batches mix prompt lengths, so HFLM left-pads: padding must not change any answer
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=64, device="cpu"),
        tasks=tasks,
        task_manager=task_manager,
        log_samples=True,
    )
    assert out is not None
    for task in tasks:
        examples = task_examples(task)
        direct = dict(
            zip(
                [ex.prompt for ex in examples],
                generate(model, [ex.prompt for ex in examples]),
                strict=True,
            )
        )
        via_lm_eval = {s["doc"]["prompt"]: s["filtered_resps"][0] for s in out["samples"][task]}
        assert via_lm_eval == {p: r.removesuffix(".") for p, r in direct.items()}, task
        expected = score(model, examples)
        got = out["results"][task]
        assert got["acc,none"] == pytest.approx(expected.acc), task
        assert got["correct,none"] == pytest.approx(expected.correct), task
        assert got["ja,none"] == pytest.approx(expected.ja), task
