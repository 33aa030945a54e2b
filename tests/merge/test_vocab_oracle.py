"""Vocabulary merging equals mergekit 0.1.5 on tiny models whose vocabularies differ.

(Padding rows repeat one mean row, so TIES would meet exact ties in magnitude there, which
its top-k breaks by position: the padded case uses task arithmetic.) mergekit numbers the
union's new tokens in the order of a set of models (and of a tokenizer's
hash-ordered vocabulary), so ids may differ between runs; rows are compared by token.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from evomerge.errors import MergeError
from evomerge.merge import merge_to_disk
from evomerge.recipe import load_recipe
from evomerge_dev.testing import make_tiny_llama
from evomerge_dev.testing import render_recipe as _render

mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_config = pytest.importorskip("mergekit.config")
mergekit_options = pytest.importorskip("mergekit.options")

VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def add_tokens(directory: Path, plain: list[str], special: list[str], seed: int) -> Path:
    """Give a tiny model new tokens (as a chat fine-tune does): tokenizer and rows."""
    tok = AutoTokenizer.from_pretrained(directory)
    tok.add_tokens(plain)
    tok.add_tokens(special, special_tokens=True)
    tok.save_pretrained(directory)
    tensors = load_file(directory / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for name in VOCAB:
        extra = 0.02 * torch.randn(len(tok) - tensors[name].shape[0], 32, generator=generator)
        tensors[name] = torch.cat([tensors[name], extra])
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] = len(tok)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vocab")
    base = make_tiny_llama(root / "base", seed=0)
    chat = make_tiny_llama(root / "chat", seed=1, base=base)
    add_tokens(chat, ["hello"], ["<|im_start|>", "<|im_end|>"], seed=5)
    lang = make_tiny_llama(root / "lang", seed=2, base=base)
    add_tokens(lang, ["konnichiwa"], ["<|im_start|>"], seed=6)
    return {
        "base": base,
        "chat": chat,
        "lang": lang,
        "a": make_tiny_llama(root / "a", seed=3, base=base),
    }


CASES = {
    "union_linear": """
merge_method: linear
tokenizer_source: union
models:
  - {model: $base, parameters: {weight: 0.5}}
  - {model: $chat, parameters: {weight: 0.3}}
  - {model: $a, parameters: {weight: 0.2}}
""",
    "union_ties_two_new_vocabularies": """
merge_method: ties
base_model: $base
tokenizer_source: union
models:
  - {model: $chat, parameters: {weight: 0.6, density: 0.5}}
  - {model: $lang, parameters: {weight: 0.5, density: 0.7}}
""",
    "source_base": """
merge_method: task_arithmetic
base_model: $base
tokenizer_source: base
models:
  - {model: $chat, parameters: {weight: 0.7}}
  - {model: $a, parameters: {weight: 0.4}}
""",
    "source_model": """
merge_method: linear
tokenizer_source: $chat
models:
  - {model: $chat, parameters: {weight: 0.5}}
  - {model: $a, parameters: {weight: 0.5}}
""",
    "tokens_section": """
merge_method: task_arithmetic
base_model: $base
tokenizer:
  source: union
  pad_to_multiple_of: 16
  tokens:
    <|im_end|>: {source: {kind: model_token, model: $lang, token: </s>}}
    hello: {source: {kind: zero}, force: true}
    w3: {source: $lang, force: true}
    <new>: {source: {kind: model_token, model: $base, token_id: 5}}
models:
  - {model: $chat, parameters: {weight: 0.6}}
  - {model: $lang, parameters: {weight: 0.5}}
""",
}


# The padding rows are the mean of the vocabulary's rows, summed in each tool's token order.
TOLERANCE = {"tokens_section": 1e-9}


def _rows_by_token(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, int], int]:
    tensors = load_file(directory / "model.safetensors")
    vocab = AutoTokenizer.from_pretrained(directory).get_vocab()
    return tensors, vocab, json.loads((directory / "config.json").read_text())["vocab_size"]


def max_abs_diff_by_token(ours_dir: Path, theirs_dir: Path) -> float:
    ours, our_vocab, our_size = _rows_by_token(ours_dir)
    theirs, their_vocab, their_size = _rows_by_token(theirs_dir)
    assert set(ours) == set(theirs)
    assert set(our_vocab) == set(their_vocab)
    assert our_size == their_size == ours[VOCAB[0]].shape[0] == theirs[VOCAB[0]].shape[0]
    diff = 0.0
    for name, tensor in ours.items():
        if name in VOCAB:  # row of each token, wherever each tool numbered it
            ids = torch.tensor([our_vocab[t] for t in their_vocab])
            tensor, other = tensor[ids], theirs[name][torch.tensor(list(their_vocab.values()))]
            if our_size > len(our_vocab):  # padding rows (the mean row)
                pad = slice(len(our_vocab), None)
                diff = max(diff, (ours[name][pad] - theirs[name][pad]).abs().max().item())
        else:
            other = theirs[name]
        diff = max(diff, (tensor.double() - other.double()).abs().max().item())
    return diff


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_vocabulary_and_rows_as_mergekit(
    case: str, models: dict[str, Path], tmp_path: Path
) -> None:
    text = _render(CASES[case], models)
    config = mergekit_config.MergeConfiguration.model_validate(yaml.safe_load(text))
    mergekit_merge.run_merge(
        config, str(tmp_path / "mk"), mergekit_options.MergeOptions(quiet=True)
    )
    ours = merge_to_disk(load_recipe(text), tmp_path / "ours")
    diff = max_abs_diff_by_token(ours, tmp_path / "mk")
    print(f"oracle vocab {case}: max abs diff {diff:.3g}")
    assert diff <= TOLERANCE.get(case, 0.0)


def test_union_keeps_every_token_and_its_row(models: dict[str, Path], tmp_path: Path) -> None:
    text = _render(CASES["union_linear"], models)
    out = merge_to_disk(load_recipe(text), tmp_path / "out")
    vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    chat_vocab = AutoTokenizer.from_pretrained(models["chat"]).get_vocab()
    assert {"hello", "<|im_start|>", "<|im_end|>"} <= set(vocab)
    merged, chat = (
        load_file(out / "model.safetensors"),
        load_file(models["chat"] / "model.safetensors"),
    )
    # a token only chat has: every model's row is chat's, so the normalized mean is chat's row
    for name in VOCAB:
        torch.testing.assert_close(
            merged[name][vocab["hello"]], chat[name][chat_vocab["hello"]], rtol=1e-6, atol=1e-7
        )


def test_different_vocabularies_need_a_tokenizer_choice(
    models: dict[str, Path], tmp_path: Path
) -> None:
    text = _render(CASES["union_linear"], models).replace("tokenizer_source: union\n", "")
    with pytest.raises(MergeError, match="vocab_size"):
        merge_to_disk(load_recipe(text), tmp_path / "out")
