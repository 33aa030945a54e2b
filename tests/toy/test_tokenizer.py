from pathlib import Path

import pytest
from transformers import AutoTokenizer

from evomerge.toy.tokenizer import EOS, PAD, VOCAB, encode, make_tokenizer


def test_saved_tokenizer_loads_offline_and_matches_the_fast_path(tmp_path: Path) -> None:
    make_tokenizer().save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "J12+7=一九."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == encode(text)
    assert tok.decode(ids) == text  # Fuse decoder: no spaces between characters
    assert tok.pad_token == PAD and tok.eos_token == EOS
    assert len(tok) == len(VOCAB)


def test_unknown_character_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'x' is not in the toy vocabulary"):
        encode("E1x2=")
