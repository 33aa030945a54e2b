"""The recipe side of vocabulary merging: a recipe's `tokenizer:` section (mergekit's layout),
which vocabulary the merged model gets and where each token's embedding row comes from.

```yaml
tokenizer:
  source: union            # union (every source's tokens), base, or a model
  pad_to_multiple_of: 64   # optional: rows past the vocabulary get the mean embedding
  tokens:
    <|im_start|>: {source: path/to/chat}                       # that model's row of the token
    <|im_end|>: {source: {kind: model_token, model: path/to/chat, token: </s>}}
    <pad>: {source: {kind: zero}, force: true}                 # force: for every model
```

Only the recipe side lives here (no torch); merge/vocabulary.py builds the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evomerge.errors import RecipeError, preview

# The largest pad_to_multiple_of: padding serves the matrix kernels (multiples of 8 to 256 in
# practice); it adds up to this many embedding and head rows, and 1e9 would allocate hundreds
# of gigabytes.
MAX_PAD_TO_MULTIPLE = 4096


@dataclass(frozen=True)
class TokenSource:
    """`model`: that model's row of the token itself; `model_token`: its row of another token
    (by `token` or `token_id`); `zero`: a zero row."""

    kind: str
    model: str | None = None
    token: str | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class TokenEmbedding:
    source: TokenSource | None = None
    force: bool = False  # use the source for every model, even those that have the token


@dataclass(frozen=True)
class TokenizerSpec:
    source: str = "union"
    tokens: Mapping[str, TokenEmbedding] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.tokens:
            out["tokens"] = {tok: _embedding_to_dict(e) for tok, e in self.tokens.items()}
        if self.pad_to_multiple_of is not None:
            out["pad_to_multiple_of"] = self.pad_to_multiple_of
        return out


def parse_tokenizer(value: Any, path: str = "tokenizer") -> TokenizerSpec | None:
    if value is None:
        return None
    data = _mapping(value, path)
    _check_keys(data, ("source", "tokens", "pad_to_multiple_of"), path)
    source = data.get("source", "union")
    if not isinstance(source, str) or not source:
        raise RecipeError(f"{path}.source: must be union, base or a model, got {preview(source)}")
    pad = data.get("pad_to_multiple_of")
    if pad is not None and (
        isinstance(pad, bool) or not isinstance(pad, int) or not 1 <= pad <= MAX_PAD_TO_MULTIPLE
    ):
        raise RecipeError(
            f"{path}.pad_to_multiple_of: must be an integer in [1, {MAX_PAD_TO_MULTIPLE}] "
            f"(MAX_PAD_TO_MULTIPLE), got {preview(pad)}"
        )
    tokens = _mapping(data.get("tokens") or {}, f"{path}.tokens")
    return TokenizerSpec(
        source=source,
        tokens={
            str(t): _parse_embedding(e, f"{path}.tokens[{preview(t)}]") for t, e in tokens.items()
        },
        pad_to_multiple_of=pad,
    )


def _parse_embedding(value: Any, path: str) -> TokenEmbedding:
    data = _mapping(value, path)
    _check_keys(data, ("source", "force"), path)
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise RecipeError(f"{path}.force: must be true or false, got {preview(force)}")
    return TokenEmbedding(_parse_source(data.get("source"), f"{path}.source"), force)


def _parse_source(value: Any, path: str) -> TokenSource | None:
    if value is None:
        return None
    if isinstance(value, str) and value:
        return TokenSource("model", model=value)
    data = _mapping(value, path)
    kind = data.get("kind")
    if kind == "zero":
        _check_keys(data, ("kind",), path)
        return TokenSource("zero")
    if kind != "model_token":
        raise RecipeError(f"{path}.kind: must be model_token or zero, got {preview(kind)}")
    _check_keys(data, ("kind", "model", "token", "token_id"), path)
    model, token, token_id = data.get("model"), data.get("token"), data.get("token_id")
    if not isinstance(model, str) or not model:
        raise RecipeError(f"{path}.model: must be a model, got {preview(model)}")
    if (token is None) == (token_id is None):
        raise RecipeError(f"{path}: give exactly one of token and token_id")
    if token is not None and not isinstance(token, str):
        raise RecipeError(f"{path}.token: must be a string, got {preview(token)}")
    if token_id is not None and (
        isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0
    ):
        raise RecipeError(
            f"{path}.token_id: must be a non-negative integer, got {preview(token_id)}"
        )
    return TokenSource("model_token", model=model, token=token, token_id=token_id)


def _embedding_to_dict(e: TokenEmbedding) -> dict[str, Any]:
    out: dict[str, Any] = {}
    s = e.source
    if s is not None and s.kind == "model":
        out["source"] = s.model
    elif s is not None and s.kind == "zero":
        out["source"] = {"kind": "zero"}
    elif s is not None:
        ref = {"token": s.token} if s.token is not None else {"token_id": s.token_id}
        out["source"] = {"kind": "model_token", "model": s.model, **ref}
    if e.force:
        out["force"] = True
    return out


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecipeError(f"{path}: must be a mapping, got {preview(value)}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise RecipeError(
            f"{path}.{unknown[0]}: unknown key; valid keys here: {', '.join(allowed)}"
        )
