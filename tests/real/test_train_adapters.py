"""scripts/train_adapters.py on the real tokenizer and model: the loss covers the answer only,
left padding changes no answer's loss, and the head restricted to the answer positions gives
the full-width loss."""

import importlib.util
from pathlib import Path

import pytest
import torch

from evomerge.real.add_words import example

pytest.importorskip("peft")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_adapters.py"


@pytest.fixture(scope="module")
def script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("train_adapters", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labels_are_the_answer_and_end_of_turn(script, smollm2: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids, labels = script.encode(tokenizer, example(47, 38, "words"))
    answer = [t for t in labels if t != -100]
    assert tokenizer.decode(answer) == "The answer is eighty-five.<|im_end|>"
    assert ids[-len(answer) :] == answer
    prompt = tokenizer.decode(ids[: len(ids) - len(answer)])
    assert prompt.endswith("What is 47 + 38? Answer in words.<|im_end|>\n<|im_start|>assistant\n")


def test_answer_loss_equals_the_full_width_loss(script, smollm2: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    rows = [script.encode(tokenizer, example(a, b, "digits")) for a, b in ((47, 38), (3, 91))]
    rows.append(script.encode(tokenizer, example(100, 0, "words")))  # another length: padding
    ids, mask, labels = next(script.batches(rows, 3, tokenizer.pad_token_id, seed=0))
    assert (mask == 0).any()  # some row is left-padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = script.answer_loss(model, ids, mask, labels)
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)
        alone = [script.answer_loss(model, *next(script.batches([r], 1, 0, 0))) for r in rows]
    torch.testing.assert_close(ours, full.loss, rtol=1e-5, atol=1e-5)
    # padding changes nothing: the batch loss is the token-weighted mean of the rows' own
    counts = torch.tensor([sum(t != -100 for t in y) for _, y in rows], dtype=torch.float32)
    weighted = (torch.stack(alone) * counts).sum() / counts.sum()
    torch.testing.assert_close(ours, weighted, rtol=1e-4, atol=1e-4)
