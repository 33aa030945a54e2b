"""Vocabulary merging, as mergekit 0.1.5 defines it: an output vocabulary (the union of every
source's tokens, the base's, or one model's), and per source model a permutation that lays
its embedding and head rows out in that vocabulary.

A row the model has is its own (unless a `tokenizer.tokens` entry says `force`). A token it
lacks gets the row its `tokens` entry names, or by default: the only model that has the token
gives it; else the base model, when it has it; else the mean of the models that have it; a
token nobody has gets zeros. With `pad_to_multiple_of`, the rows past the vocabulary get the
mean row. The merge method then runs on the laid-out rows as on any tensor.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import MergeError, preview
from evomerge.merge.architecture import EMBED, LM_HEAD
from evomerge.merge.confine import ModelRoot
from evomerge.recipe import Recipe
from evomerge.recipe_tokenizer import TokenEmbedding, TokenizerSpec, TokenSource

VOCAB_TENSORS = (EMBED, LM_HEAD)  # tensors indexed by token id along their first axis
# The files of a tokenizer (those transformers' tokenizers read, and the chat template): what a
# merged vocabulary is built from, and what a merge copies into its output otherwise.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
)
LOADER_FILES = ("config.json",)  # AutoTokenizer reads the model type here when it must


@dataclass(frozen=True)
class Vocabulary:
    tokenizer: Any  # the output tokenizer (transformers), saved with the merged model
    vocab: Mapping[str, int]  # output token -> id
    rows: int  # output rows: len(vocab), padded to pad_to_multiple_of
    permutations: Mapping[str, torch.Tensor]  # model -> its row of each output id (-1: none)
    original_vocabs: Mapping[str, Mapping[str, int]]  # model -> its own token -> id
    tokens: Mapping[str, TokenEmbedding]  # the recipe's per-token sources
    base_model: str | None


def tokenizer_spec(recipe: Recipe) -> TokenizerSpec | None:
    """The recipe's vocabulary choice (`tokenizer:` or `tokenizer_source:`), None for neither."""
    if recipe.tokenizer is not None:
        return recipe.tokenizer
    if recipe.tokenizer_source is not None:
        return TokenizerSpec(source=recipe.tokenizer_source)
    return None


def build_vocabulary(
    recipe: Recipe, directory: Callable[[str], Path], vocab_sizes: Mapping[str, int]
) -> Vocabulary | None:
    """The output vocabulary and every referenced model's permutation (tokenizers only)."""
    spec = tokenizer_spec(recipe)
    if spec is None:
        return None
    models = recipe.referenced_models()
    base = recipe.base_model or models[0]
    tokenizers = {m: _load_tokenizer(directory(m), m) for m in dict.fromkeys([base, *models])}
    if any(idx >= vocab_sizes[base] for idx in tokenizers[base].get_vocab().values()):
        raise MergeError(
            f"model {preview(base)}: its tokenizer has ids beyond config vocab_size "
            f"{vocab_sizes[base]}; vocabulary merging needs every token to have a row"
        )
    if spec.source == "union":
        out = _union_tokenizer(directory(base), base, tokenizers, vocab_sizes)
    elif spec.source == "base":
        out = _load_tokenizer(directory(base), base)
    else:
        out = _load_tokenizer(directory(spec.source), spec.source)
    for token in spec.tokens:  # tokens the recipe names join the vocabulary
        if token not in out.get_vocab():
            out.add_tokens(token)
    vocab = out.get_vocab()
    rows = len(vocab)
    if spec.pad_to_multiple_of and rows % spec.pad_to_multiple_of:
        rows += spec.pad_to_multiple_of - rows % spec.pad_to_multiple_of
    originals = {m: tokenizers[m].get_vocab() for m in models}
    permutations = {m: _permutation(vocab, originals[m], vocab_sizes[m]) for m in models}
    return Vocabulary(out, vocab, rows, permutations, originals, spec.tokens, recipe.base_model)


def _load_tokenizer(path: Path, ref: str) -> Any:
    """The model's tokenizer, loaded from private copies of its tokenizer files, each read
    through the confinement check (transformers, given the directory, would follow any link
    and publish what it read: a chat template linked to /etc/passwd, say)."""
    from transformers import AutoTokenizer

    root = ModelRoot.of(path)
    with tempfile.TemporaryDirectory(prefix="evomerge-tokenizer-") as tmp:
        copied = copy_files(root, Path(tmp), (*TOKENIZER_FILES, *LOADER_FILES))
        if not set(copied) - set(LOADER_FILES):
            raise MergeError(f"model {preview(ref)}: no tokenizer files in {path}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
        except Exception as e:  # transformers raises many types for a missing or bad tokenizer
            raise MergeError(
                f"model {preview(ref)}: cannot load its tokenizer from {path} "
                f"({preview(str(e).replace(tmp, str(path)))})"
            ) from None
    return tokenizer


def copy_files(root: ModelRoot, target: Path, names: Iterable[str]) -> list[str]:
    """Copy the named files that exist in the model directory into `target` as regular files,
    each resolved inside the model's root (a link to a file elsewhere is refused, never read
    or published); returns the names copied."""
    copied = []
    for name in names:
        if root.exists(name):
            root.copy(name, target / name)
            copied.append(name)
    return copied


def _union_tokenizer(
    base_dir: Path, base: str, tokenizers: Mapping[str, Any], vocab_sizes: Mapping[str, int]
) -> Any:
    """The base tokenizer plus every other token of the sources (plain ones in model order,
    each model's in id order), then every source's added (special) tokens."""
    plain: dict[str, None] = {}
    added: dict[str, Any] = {}
    for model, tok in tokenizers.items():
        specials = {info.content for info in tok.added_tokens_decoder.values()}
        for token, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if idx < vocab_sizes[model] and token not in specials:
                plain.setdefault(token)
        for idx, info in sorted(tok.added_tokens_decoder.items()):
            if idx < vocab_sizes[model]:
                added.setdefault(info.content, info)
    out = _load_tokenizer(base_dir, base)
    known = out.get_vocab()
    for token in plain:
        if token not in known and token not in added:
            out.add_tokens(token)
    for info in added.values():
        out.add_tokens(info)
    return out


def _permutation(vocab: Mapping[str, int], own: Mapping[str, int], size: int) -> torch.Tensor:
    rows = torch.full((len(vocab),), -1, dtype=torch.long)
    for token, new_id in vocab.items():
        old = own.get(token)
        if old is not None and old < size:
            rows[new_id] = old
    return rows


def permute_rows(
    vocab: Vocabulary, name: str, models: Sequence[str], tensors: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Each model's `name` tensor laid out in the output vocabulary (one row per token)."""
    if any(t.shape[1:] != tensors[0].shape[1:] for t in tensors):
        shapes = {m: list(t.shape) for m, t in zip(models, tensors, strict=True)}
        raise MergeError(f"{name}: rows of different widths cannot be aligned: {shapes}")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    perms = [vocab.permutations[m] for m in models]
    defaults = _default_rows(vocab, name, models, tensors, perms, dtype)
    forced = torch.zeros(len(vocab.vocab), dtype=torch.bool)
    for token, embedding in vocab.tokens.items():
        if embedding.force:
            forced[vocab.vocab[token]] = True
    out = []
    for perm, old in zip(perms, tensors, strict=True):
        new = torch.zeros((vocab.rows, *old.shape[1:]), dtype=dtype, device=old.device)
        own = (perm >= 0) & ~forced
        new[: len(perm)][own] = old[perm[own]].to(dtype)
        for token_id, row in defaults.items():
            if not own[token_id]:
                new[token_id] = row
        if vocab.rows > len(perm):  # padding rows: the mean of the vocabulary's rows
            new[len(perm) :] = new[: len(perm)].mean(dim=0)
        out.append(new)
    return out


def _default_rows(
    vocab: Vocabulary,
    name: str,
    models: Sequence[str],
    tensors: Sequence[torch.Tensor],
    perms: Sequence[torch.Tensor],
    dtype: torch.dtype,
) -> dict[int, torch.Tensor]:
    """Rows for the tokens some model lacks (or that are forced), by token id."""
    present = torch.stack([p >= 0 for p in perms])  # (models, vocab)
    needed = ~present.all(dim=0)
    for token, embedding in vocab.tokens.items():
        needed[vocab.vocab[token]] |= embedding.force
    token_of = {i: t for t, i in vocab.vocab.items()}
    rows = {}
    for token_id in needed.nonzero().flatten().tolist():
        token = token_of[token_id]
        source = _source_of(vocab, token, token_id, models, present[:, token_id])
        if source is None:  # present in several models, none of them the base: their mean
            row = torch.zeros(tensors[0].shape[1:], dtype=dtype, device=tensors[0].device)
            count = 0
            for p, t in zip(perms, tensors, strict=True):
                if p[token_id] >= 0:
                    row = row + t[p[token_id]]
                    count += 1
            rows[token_id] = row / count
        else:
            rows[token_id] = _row_from(vocab, name, source, token, token_id, models, tensors, dtype)
    return rows


def _source_of(
    vocab: Vocabulary, token: str, token_id: int, models: Sequence[str], present: torch.Tensor
) -> TokenSource | None:
    configured = vocab.tokens.get(token)
    if configured is not None and configured.source is not None:
        return configured.source
    holders = [m for m, has in zip(models, present.tolist(), strict=True) if has]
    if len(holders) == 1:
        return TokenSource("model", model=holders[0])
    if not holders:
        return TokenSource("zero")
    base = vocab.base_model
    if base is not None and base in models and vocab.permutations[base][token_id] >= 0:
        return TokenSource("model", model=base)
    return None


def _row_from(
    vocab: Vocabulary,
    name: str,
    source: TokenSource,
    token: str,
    token_id: int,
    models: Sequence[str],
    tensors: Sequence[torch.Tensor],
    dtype: torch.dtype,
) -> torch.Tensor:
    if source.kind == "zero":
        return torch.zeros(tensors[0].shape[1:], dtype=dtype, device=tensors[0].device)
    model = source.model
    where = f"tokenizer.tokens[{preview(token)}].source"
    if model is None or model not in models:
        raise MergeError(f"{where}: model {preview(model)} is not an input of {name}")
    tensor = tensors[list(models).index(model)]
    if source.kind == "model_token":
        src_id = source.token_id
        if source.token is not None:
            src_id = vocab.original_vocabs[model].get(source.token)
            if src_id is None:
                raise MergeError(
                    f"{where}: model {preview(model)} has no token {preview(source.token)}"
                )
        if src_id is None or not 0 <= src_id < tensor.shape[0]:
            raise MergeError(
                f"{where}: token id {src_id} is out of range for model {preview(model)}"
            )
        return tensor[src_id].to(dtype)
    own = int(vocab.permutations[model][token_id])
    if own < 0:
        raise MergeError(f"{where}: model {preview(model)} has no token {preview(token)}")
    return tensor[own].to(dtype)
