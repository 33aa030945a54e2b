"""Direct greedy scoring of a toy model: the reference the lm-eval toy tasks must agree with.

Prompts of equal length are decoded together, so no padding is involved; generation stops
at the answer's closing `.` (or after `max_new` tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from evomerge.toy.data import END, Example, read_answer, write_number
from evomerge.toy.tokenizer import EOS, SPECIAL, VOCAB, encode

MAX_NEW_TOKENS = 8  # the longest answer, "一〇八." or "999.", is 4 characters


@dataclass(frozen=True)
class Score:
    """Shares of examples (in [0, 1]); the metric names of the lm-eval toy tasks."""

    acc: float  # the number right AND in the expected script (MGSM-JA's rule)
    correct: float  # the number right, in either script
    ja: float  # answered in kanji digits


def score_response(response: str, value: int, script: str) -> dict[str, float]:
    """Per-example metrics of one response (text after the prompt, cut at the first `.`)."""
    core = response.strip().removesuffix(END).rstrip()
    got, got_script = read_answer(core)
    # canonical digits only: "019" or "〇一九" is not a right answer
    correct = got == value and got_script is not None and core == write_number(value, got_script)
    return {
        "acc": float(correct and got_script == script),
        "correct": float(correct),
        "ja": float(got_script == "ja"),
    }


def _decode(ids: list[int]) -> str:
    """Text up to and including the first `.`; stops at EOS, drops other special tokens
    (as lm-eval's decoding with skip_special_tokens does)."""
    text = ""
    for i in ids:
        tok = VOCAB[i]
        if tok == EOS:
            break
        if tok not in SPECIAL:
            text += tok
            if tok == END:
                break
    return text


@torch.no_grad()
def generate(
    model: PreTrainedModel, prompts: Sequence[str], max_new: int = MAX_NEW_TOKENS
) -> list[str]:
    """Greedy continuations of `prompts`, each cut after the first `.`."""
    by_len: dict[int, list[str]] = {}
    for p in dict.fromkeys(prompts):
        by_len.setdefault(len(encode(p)), []).append(p)
    out: dict[str, str] = {}
    device = next(model.parameters()).device
    for length, group in by_len.items():
        x = torch.tensor([encode(p) for p in group], device=device)  # (B, T)
        for _ in range(max_new):
            logits = model(input_ids=x, use_cache=False).logits[:, -1]  # (B, V)
            x = torch.cat([x, logits.argmax(-1, keepdim=True)], dim=1)
        for p, row in zip(group, x[:, length:].tolist(), strict=True):
            out[p] = _decode(row)
    return [out[p] for p in prompts]


def score(model: PreTrainedModel, examples: Sequence[Example]) -> Score:
    """Mean metrics of greedy answers to `examples`."""
    if not examples:
        raise ValueError("score: no examples")
    responses = generate(model, [ex.prompt for ex in examples])
    rows = [
        score_response(r, ex.value, ex.script) for r, ex in zip(responses, examples, strict=True)
    ]
    n = len(rows)
    return Score(**{k: sum(r[k] for r in rows) / n for k in ("acc", "correct", "ja")})
