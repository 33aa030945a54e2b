"""The toy family's character-level tokenizer, loadable offline with `AutoTokenizer`.

A `tokenizers` BPE model with an explicit vocabulary and no merges splits text into single
characters; `decoders.Fuse()` joins them back without the spaces a BPE decoder would insert.
Wrapped in `PreTrainedTokenizerFast` and saved with `save_pretrained`, it writes
tokenizer.json + tokenizer_config.json, which `AutoTokenizer.from_pretrained(dir)` reads back.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from evomerge.toy.data import EN_DIGITS, END, JA_DIGITS, MODES

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL = frozenset({PAD, EOS, UNK})
# Order fixes the token ids, and so the family's bytes: append, never reorder.
VOCAB: tuple[str, ...] = (
    PAD,
    EOS,
    UNK,
    *EN_DIGITS,
    *JA_DIGITS,
    *MODES,
    *"+MCT=",
    END,
    "S",  # toy v3: the successor task
    "D",  # toy v3: the doubling task (a skill the research tried; no mix of v3 or v4 trains it)
)
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    """Token ids of `text`, the same as the saved tokenizer's (a fast path for training)."""
    try:
        return [TOKEN_ID[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the toy vocabulary") from None


def make_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer every model of the family is saved with."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([PAD, EOS, UNK])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        # lm-eval's HFLM pads batches of prompts on the left for generation
        padding_side="left",
        model_max_length=64,
    )
